//! `frugal doctor`: which devices, drivers and libraries this machine has, and
//! whether every shipped kernel module loads (on each GPU) and parses (in the
//! emulator). A machine without a GPU is not a failure: it says so and exits 0.
//! A GPU whose modules do not load, or a module the emulator cannot parse, is
//! (exit 1), so scripts can rely on the status.

use frugal_ptx::catalogue;
use frugal_runtime::device::cuda::{self, CudaDevice};
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::{dylib, facts, RuntimeError};

use crate::error::CliError;

/// What `frugal doctor --help` says first.
pub const ABOUT: &str = "\
Reports: CPU threads and memory; the CUDA driver (library, version); each GPU
(name, SM version, SMs, memory, dense bf16 peak and default price from the facts
table, or 'unknown'); whether every shipped PTX module loads on it; NCCL and NVTX
presence; and whether every kernel parses in the emulator.";

/// `frugal doctor` takes no flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status 0 when everything present works (no GPU at all is fine), 1 otherwise."
)]
pub struct DoctorFlags {}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn run(_flags: DoctorFlags) -> Result<(), CliError> {
    let mut problems: Vec<String> = Vec::new();

    let cpu = Device::cpu();
    let threads = match &cpu {
        Device::Cpu(c) => c.threads(),
        _ => 1,
    };
    match cpu.memory_info() {
        Ok(m) => println!(
            "cpu       {threads} threads, {} memory ({} available); default price ${:.3}/h at ${}/core-hour",
            gib(m.total),
            gib(m.free),
            facts::cpu_usd_per_hour(threads),
            facts::CPU_USD_PER_CORE_HOUR
        ),
        Err(e) => println!("cpu       {threads} threads (memory unknown: {e})"),
    }

    let probe = dylib::probe("cuda");
    match cuda::driver_version() {
        Err(e) => {
            println!("cuda      no GPU: {e}");
            println!("          (the cpu and emu backends work without it)");
        }
        Ok(v) => {
            println!(
                "cuda      driver library {}, CUDA {} (cuDriverGetVersion {v})",
                probe.found.as_deref().unwrap_or("?"),
                cuda::format_version(v)
            );
            let count = cuda::device_count().unwrap_or(0);
            if count == 0 {
                println!("          the driver sees no device");
            }
            for i in 0..count {
                gpu_report(i, &mut problems);
            }
        }
    }

    match dylib::nccl_version() {
        Ok((a, b, c)) => println!("nccl      version {a}.{b}.{c}"),
        Err(e) => println!("nccl      not available ({e})"),
    }
    println!(
        "nvtx      {}",
        if dylib::nvtx_present() {
            "libnvToolsExt found: NVTX ranges are recorded on cuda"
        } else {
            "libnvToolsExt not found: NVTX ranges are no-ops (Nsight still sees kernel names)"
        }
    );

    for m in catalogue::modules() {
        match frugal_ptx::emu::Module::parse(m.text) {
            Ok(parsed) => {
                let names = parsed.kernel_names();
                println!(
                    "emu       module {:<12} parses: {} kernel(s): {}",
                    m.name,
                    names.len(),
                    names.join(", ")
                );
            }
            Err(e) => {
                println!("emu       module {:<12} does NOT parse: {e}", m.name);
                problems.push(format!(
                    "module '{}' does not parse in the emulator",
                    m.name
                ));
            }
        }
    }
    match emu_smoke() {
        Ok(()) => println!("emu       device opens; fill_f32 runs through the launch path"),
        Err(e) => {
            println!("emu       FAILED: {e}");
            problems.push(format!("the emulated device: {e}"));
        }
    }

    if problems.is_empty() {
        println!("ok");
        Ok(())
    } else {
        Err(CliError::DoctorProblems(problems))
    }
}

/// Opens the emulated GPU and runs one shipped kernel through the same launch
/// code CUDA uses, checking the result.
fn emu_smoke() -> Result<(), RuntimeError> {
    let dev = Device::open(DeviceSpec::Emu)?;
    let n = 1000;
    let buf = dev.alloc(n * 4, "doctor")?;
    let x = buf.as_view::<f32>();
    let args = [x.into(), Arg::U64(n as u64), Arg::F32(2.5)];
    dev.launch("fill_f32", &dims_1d(n as u64, 128, 4, 8), &args)?;
    dev.synchronize()?;
    match buf.to_vec::<f32>()?.iter().position(|&v| v != 2.5) {
        None => Ok(()),
        Some(i) => Err(RuntimeError::BadLaunch {
            kernel: "fill_f32".into(),
            reason: format!("element {i} was not written"),
        }),
    }
}

fn gpu_report(ordinal: usize, problems: &mut Vec<String>) {
    let info = match cuda::device_info(ordinal) {
        Ok(i) => i,
        Err(e) => {
            println!("cuda:{ordinal}    {e}");
            problems.push(format!("cuda:{ordinal}: {e}"));
            return;
        }
    };
    println!(
        "cuda:{ordinal}    {}  sm_{}  {} SMs  {} total",
        info.name,
        info.sm,
        info.multiprocessors,
        gib(info.total_memory)
    );
    match facts::lookup(&info.name) {
        Some(f) => println!(
            "          facts: {}  bf16 dense {}  default ${:.2}/GPU-hour{}",
            f.label,
            f.bf16_dense_flops
                .map_or("unknown".to_string(), |p| format!(
                    "{:.1} TFLOP/s",
                    p / 1e12
                )),
            f.default_usd_per_gpu_hour,
            f.paper_price_units
                .map(|u| format!("  paper units {u:.2}"))
                .unwrap_or_default()
        ),
        None => println!(
            "          facts: unknown device (MFU and default price will be reported as unknown)"
        ),
    }
    match CudaDevice::open(ordinal) {
        Ok(dev) => {
            if let Ok(m) = dev.memory_info() {
                println!("          memory: {} free of {}", gib(m.free), gib(m.total));
            }
            println!(
                "          modules: all {} shipped module(s) loaded",
                catalogue::modules().len()
            );
        }
        Err(e) => {
            println!("          open failed: {e}");
            problems.push(format!("cuda:{ordinal}: {e}"));
            if let Ok(results) = cuda::check_modules(ordinal) {
                for (name, r) in results {
                    match r {
                        Ok(s) => println!("          module {name}: {s}"),
                        Err(e) => println!("          module {name}: FAILED: {e}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_runs_and_succeeds_on_this_machine() {
        // Without a GPU it must say so and succeed; with one, every module must load.
        let result = run(DoctorFlags {});
        assert!(result.is_ok(), "{result:?}");
    }
}
