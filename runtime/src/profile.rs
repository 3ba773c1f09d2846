//! `--profile-steps A:B`: wraps exactly steps A..=B in cuProfilerStart/Stop, so
//! that `nsys profile --capture-range=cudaProfilerApi` (or Nsight Compute's
//! `--profile-from-start off`) captures only that window.

use std::str::FromStr;

use crate::device::Device;
use crate::error::RuntimeError;

/// The steps to capture, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileWindow {
    /// First step captured.
    pub first: u64,
    /// Last step captured.
    pub last: u64,
}

impl FromStr for ProfileWindow {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<ProfileWindow, RuntimeError> {
        let bad = || RuntimeError::BadProfileSteps {
            given: s.to_string(),
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let first: u64 = a.trim().parse().map_err(|_| bad())?;
        let last: u64 = b.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(bad());
        }
        Ok(ProfileWindow { first, last })
    }
}

/// Starts and stops the profiler at the window's edges.
pub struct Profiler {
    window: Option<ProfileWindow>,
    running: bool,
}

impl Profiler {
    /// A profiler for `window` (`None`: never captures).
    pub fn new(window: Option<ProfileWindow>) -> Profiler {
        Profiler {
            window,
            running: false,
        }
    }

    /// Call before step `step` runs; starts the capture at the window's first step.
    ///
    /// # Errors
    /// Driver errors.
    pub fn step_begin(&mut self, device: &Device, step: u64) -> Result<(), RuntimeError> {
        if let (Some(w), Device::Cuda(d)) = (self.window, device) {
            if step == w.first && !self.running {
                d.synchronize()?;
                d.profiler_start()?;
                self.running = true;
            }
        }
        Ok(())
    }

    /// Call after step `step` finished; stops the capture after the last step.
    ///
    /// # Errors
    /// Driver errors.
    pub fn step_end(&mut self, device: &Device, step: u64) -> Result<(), RuntimeError> {
        if let (Some(w), Device::Cuda(d)) = (self.window, device) {
            if step >= w.last && self.running {
                d.synchronize()?;
                d.profiler_stop()?;
                self.running = false;
            }
        }
        Ok(())
    }

    /// True while capturing.
    pub fn is_running(&self) -> bool {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(
            "3:5".parse::<ProfileWindow>().unwrap(),
            ProfileWindow { first: 3, last: 5 }
        );
        assert_eq!(
            "4:4".parse::<ProfileWindow>().unwrap(),
            ProfileWindow { first: 4, last: 4 }
        );
        for bad in ["5:3", "3", "a:b", ":4", ""] {
            let e = bad.parse::<ProfileWindow>().unwrap_err().to_string();
            assert!(e.contains("A:B"), "{e}");
        }
    }

    #[test]
    fn the_cpu_backend_never_captures() {
        let dev = Device::cpu();
        let mut p = Profiler::new(Some(ProfileWindow { first: 0, last: 0 }));
        p.step_begin(&dev, 0).unwrap();
        assert!(!p.is_running());
        p.step_end(&dev, 0).unwrap();
    }
}
