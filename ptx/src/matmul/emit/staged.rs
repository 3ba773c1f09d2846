//! The register-staged (`_rs`) operand path of [`super::Kernel`]: global memory to registers
//! to shared memory without `cp.async`, for operands of any alignment and leading dimension.
//!
//! Work split: each operand tile is cut into 4-byte *units* (two consecutive elements along
//! the contiguous dimension); a warp instruction moves 32 units. Where a tile row holds at
//! least 32 units (M/N-contiguous tiles: 32 or 64 units per row), lanes take consecutive
//! units of one row; K-contiguous rows hold only BK/2 = 16 units, so lanes 0-15 take row r
//! and lanes 16-31 row r+4. Hence:
//! - global loads: one request reads every other 2-byte element of 128 contiguous bytes (or
//!   of two 64-byte row pieces) and the next request the elements between, so each request
//!   touches 2x its ideal sectors (the sectors of 128 bytes for 64 bytes read), all of them
//!   in the lines the pair of requests reads completely; the former split (8 consecutive
//!   elements per thread, lanes 16 bytes apart) touched 8x;
//! - shared stores: one `st.shared.b32` per unit; 32 consecutive words are 32 distinct banks,
//!   and rows r, r+4 of a K-contiguous tile (pitch 80 bytes = 20 words, 4*20 = 80 = 16 mod 32)
//!   start 16 banks apart, so lanes 0-15 and 16-31 never share a bank: one wavefront per
//!   request, no conflict (CUDA C++ Programming Guide, "Shared Memory" of compute capability
//!   5.x and later: 32 banks of successive 4-byte words). The former 16-byte stores of rows r,
//!   r+1 overlapped in 4 banks (2 wavefronts per quarter-warp).
//!
//! The shared layout, and so the conflict-free `ldmatrix` reads, are unchanged.
//!
//! A thread's units are j = 0, 1, ... at rows row0 + R*j (R = threads / units per row) and a
//! fixed unit column, so one global offset, one shared offset and two limits per operand
//! describe all of them: the address of unit j adds j row steps.

use super::{Kernel, OperandTile};

/// The staged split of one operand tile (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Units {
    /// 4-byte units per shared row.
    pub(super) per_row: u32,
    /// Rows between a thread's consecutive units (R).
    pub(super) row_step: u32,
    /// Units per thread.
    pub(super) per_thread: u32,
}

impl Kernel {
    /// The staged split of `tile`.
    pub(super) fn units(&self, tile: &OperandTile) -> Units {
        let row_elems = if tile.k_contiguous {
            self.cfg.bk
        } else {
            tile.mn
        };
        let per_row = row_elems / 2;
        let row_step = self.cfg.threads() / per_row;
        Units {
            per_row,
            row_step,
            per_thread: tile.rows / row_step,
        }
    }

    /// Staged variant: the thread's first unit of operand `op` ('a' or 'b'): %g{op}0 its
    /// global byte offset from the operand's k-tile base, %s{op}0 its shared offset, the
    /// limits %k{op}0 (K minus the thread's first k index, before k0) and %m{op}0 (M or N
    /// minus its first mn index), and the global row step (%rd15 for A, %rd16 for B).
    pub(super) fn staged_setup(&mut self, op: char) {
        let (tile, mn0, mn_len, ld, step, next, base, row_bytes) = if op == 'a' {
            (
                self.geo.a(),
                "%r9",
                "%r1",
                "%rd4",
                "%rd9",
                "%rd7",
                "%rd1",
                "%rd15",
            )
        } else {
            (
                self.geo.b(),
                "%r10",
                "%r2",
                "%rd5",
                "%rd10",
                "%rd8",
                "%rd2",
                "%rd16",
            )
        };
        let u = self.units(&tile);
        assert!(
            u.per_row >= 32
                || (u.per_row == 16 && (self.cfg.warps_m * self.cfg.warps_n).is_multiple_of(4)),
            "staged split of {u:?} needs 32-unit rows, or 16-unit rows and warps in fours"
        );
        self.p.line(format!(
            "// staged units of {op}: {} per thread, {} per shared row, rows {} apart (pitch {} bytes)",
            u.per_thread, u.per_row, u.row_step, tile.pitch
        ));
        // %r21 = row0, %r22 = unit column.
        if u.per_row >= 32 {
            self.p.lines(&[
                format!("div.u32 %r21, %r5, {};", u.per_row),
                format!("rem.u32 %r22, %r5, {};", u.per_row),
            ]);
        } else {
            // row0 = 8*(warp/4) + warp%4 + 4*(lane/16), unit = lane%16.
            self.p.lines(&[
                "shr.u32 %r20, %r5, 5;                   // warp".to_string(),
                "shr.u32 %r21, %r20, 2;".into(),
                "shl.b32 %r21, %r21, 3;".into(),
                "and.b32 %r23, %r20, 3;".into(),
                "add.u32 %r21, %r21, %r23;".into(),
                "shr.u32 %r23, %r6, 4;".into(),
                "shl.b32 %r23, %r23, 2;".into(),
                "add.u32 %r21, %r21, %r23;               // row0".into(),
                "and.b32 %r22, %r6, 15;                  // unit column".into(),
            ]);
        }
        self.p.lines(&[
            format!("mul.lo.u32 %r23, %r21, {};", tile.pitch),
            format!("mad.lo.u32 %s{op}0, %r22, 4, %r23;"),
            "shl.b32 %r22, %r22, 1;                  // first element along the row".into(),
        ]);
        let lines = if tile.k_contiguous {
            // Rows are mn (mn0 + row0), the unit column is k.
            [
                format!("add.u32 %r24, {mn0}, %r21;                // mn"),
                "cvt.u64.u32 %rd11, %r24;".into(),
                format!("mul.lo.u64 %rd11, %rd11, {ld};"),
                "cvt.u64.u32 %rd12, %r22;".into(),
                format!("sub.s32 %k{op}0, %r3, %r22;"),
                format!("sub.s32 %m{op}0, {mn_len}, %r24;"),
            ]
        } else {
            // Rows are k (row0), the unit column is mn (mn0 + 2*unit).
            [
                format!("add.u32 %r24, {mn0}, %r22;                // mn"),
                "cvt.u64.u32 %rd11, %r21;".into(),
                format!("mul.lo.u64 %rd11, %rd11, {ld};"),
                "cvt.u64.u32 %rd12, %r24;".into(),
                format!("sub.s32 %k{op}0, %r3, %r21;"),
                format!("sub.s32 %m{op}0, {mn_len}, %r24;"),
            ]
        };
        self.p.lines(&lines);
        let step_line = if tile.k_contiguous {
            format!("mov.u64 {step}, {};", self.cfg.bk * 2)
        } else {
            format!("mul.lo.u64 {step}, {ld}, {};", self.cfg.bk * 2)
        };
        self.p.lines(&[
            "add.u64 %rd11, %rd11, %rd12;".to_string(),
            format!("shl.b64 %g{op}0, %rd11, 1;"),
            format!(
                "mul.lo.u64 {row_bytes}, {ld}, {};       // bytes per row step",
                2 * u.row_step
            ),
            format!("{step_line}                  // bytes per k tile"),
            format!("mov.u64 {next}, {base};"),
        ]);
    }

    /// Staged variant: loads the next k tile (k0 = %r11) into %ha/%hb, one `ld.global.b16`
    /// per element (any alignment), and advances k0 and the tile bases. A tile wholly inside
    /// M/N and K (the common case; one uniform branch) loads without predicates; an edge tile
    /// predicates each element and zeroes what lies past M/N or K, as `cp.async`'s src-size
    /// zero-fill does.
    pub(super) fn fetch_tile(&mut self) {
        for (op, tile) in [('a', self.geo.a()), ('b', self.geo.b())] {
            let u = self.units(&tile);
            let (next, row_bytes, mn0, mn_len, extent) = if op == 'a' {
                ("%rd7", "%rd15", "%r9", "%r1", self.cfg.bm)
            } else {
                ("%rd8", "%rd16", "%r10", "%r2", self.cfg.bn)
            };
            let n = self.p.label_id();
            self.p.lines(&[
                format!("add.u32 %r20, {mn0}, {extent};"),
                format!("setp.le.u32 %p3, %r20, {mn_len};"),
                format!("add.u32 %r20, %r11, {};", self.cfg.bk),
                "setp.le.and.u32 %p3, %r20, %r3, %p3;".into(),
                format!("add.u64 %rd11, {next}, %g{op}0;"),
                format!("@%p3 bra FETCH_FULL_{n};"),
                // Edge tile: %r20 = limit along the row's units (elements), %r21 = limit
                // across rows, both relative to this thread's first unit.
                format!("sub.s32 %r22, %k{op}0, %r11;"),
            ]);
            let (along, across) = if tile.k_contiguous {
                ("%r22".to_string(), format!("%m{op}0"))
            } else {
                (format!("%m{op}0"), "%r22".to_string())
            };
            self.p.lines(&[
                format!("setp.gt.s32 %p7, {along}, 0;"),
                format!("setp.gt.s32 %p8, {along}, 1;"),
            ]);
            for j in 0..u.per_thread {
                if j > 0 {
                    self.p.line(format!("add.u64 %rd11, %rd11, {row_bytes};"));
                }
                self.p
                    .line(format!("setp.gt.s32 %p9, {across}, {};", j * u.row_step));
                for e in 0..2 {
                    let h = 2 * j + e;
                    self.p.lines(&[
                        format!("and.pred %p3, %p9, %p{};", 7 + e),
                        format!("mov.b16 %h{op}{h}, 0;"),
                        format!("@%p3 ld.global.b16 %h{op}{h}, [%rd11+{}];", 2 * e),
                    ]);
                }
            }
            self.p.line(format!("bra FETCH_DONE_{n};"));
            self.p.label(&format!("FETCH_FULL_{n}"));
            for j in 0..u.per_thread {
                if j > 0 {
                    self.p.line(format!("add.u64 %rd11, %rd11, {row_bytes};"));
                }
                for e in 0..2 {
                    self.p.line(format!(
                        "ld.global.b16 %h{op}{}, [%rd11+{}];",
                        2 * j + e,
                        2 * e
                    ));
                }
            }
            self.p.label(&format!("FETCH_DONE_{n}"));
        }
        let lines = [
            format!("add.u32 %r11, %r11, {};", self.cfg.bk),
            "add.u64 %rd7, %rd7, %rd9;".into(),
            "add.u64 %rd8, %rd8, %rd10;".into(),
        ];
        self.p.lines(&lines);
    }

    /// Staged variant: packs each fetched unit into a word and stores it with one
    /// `st.shared.b32` into the write stage, then advances the write stage.
    pub(super) fn stash_tile(&mut self) {
        for (op, tile) in [('a', self.geo.a()), ('b', self.geo.b())] {
            let u = self.units(&tile);
            let shared_base = if op == 'a' { 0 } else { self.geo.a().bytes() };
            self.p.line(format!("add.u32 %r21, %r13, %s{op}0;"));
            for j in 0..u.per_thread {
                let h = 2 * j;
                let off = shared_base + j * u.row_step * tile.pitch;
                self.p.lines(&[
                    format!("mov.b32 %r28, {{%h{op}{h}, %h{op}{}}};", h + 1),
                    format!("st.shared.b32 [%r21+{off}], %r28;"),
                ]);
            }
        }
        self.advance_stage("%r13");
    }
}
