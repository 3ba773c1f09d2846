/* Linked into the portable build only (scripts/build-portable.sh). glibc 2.17 has no
 * wrappers for these two system calls, which frugal calls through the libc crate:
 * getrandom (the run id; glibc 2.25) and memfd_create (the shared-memory all-reduce;
 * glibc 2.27). Each is what glibc's own wrapper is: the raw system call, -1 and errno on
 * failure. On a kernel without them (before 3.17) that is ENOSYS, which frugal handles
 * as it does on a new glibc. Hidden: they serve frugal's own calls and never stand in
 * for libc's in the libraries frugal loads (libcuda, libnccl). */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

__attribute__((visibility("hidden"))) ssize_t getrandom(void *buf, size_t len, unsigned int flags) {
    return syscall(SYS_getrandom, buf, len, flags);
}

__attribute__((visibility("hidden"))) int memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}
