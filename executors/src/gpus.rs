//! The GPUs this machine offers to steps, named as `CUDA_VISIBLE_DEVICES` names
//! them. A step that asks for `gpus=N` is given N of these names, not shared
//! with any other running step, in its own `CUDA_VISIBLE_DEVICES`.
//!
//! Names are UUIDs where mustbuild finds the GPUs itself (NVML): an index
//! means one thing to CUDA, which by default numbers the fastest GPU first,
//! and another to NVML and `nvidia-smi`, which number them by PCI bus. Where
//! indices come from the environment (a batch system's, or a user's), a step
//! given them also gets `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so that its CUDA
//! numbers the GPUs as NVML does, whose counters its energy is read from.

/// Where the list of GPUs came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// `CUDA_VISIBLE_DEVICES` was set (by a user, Slurm or HTCondor): exactly those.
    Environment,
    /// NVML (the NVIDIA driver's management library) counted the devices.
    Nvml,
    /// Neither: no GPU, with NVML's reason.
    None(String),
}

/// The GPUs steps may use and how they were found.
pub fn detect() -> (Vec<String>, GpuSource) {
    if let Some(list) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        return (
            parse_visible_devices(&list.to_string_lossy()),
            GpuSource::Environment,
        );
    }
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => return (Vec::new(), GpuSource::None(e.to_string())),
    };
    match nvml.device_count() {
        Ok(n) => {
            // By UUID; by index only where a device will not say its UUID.
            let name = |i: u32| {
                (nvml.device_by_index(i).and_then(|d| d.uuid())).unwrap_or_else(|_| i.to_string())
            };
            ((0..n).map(name).collect(), GpuSource::Nvml)
        }
        Err(e) => (Vec::new(), GpuSource::None(e.to_string())),
    }
}

/// The variables that give a step `gpus`: `CUDA_VISIBLE_DEVICES`, and where
/// any is an index, the order NVML numbers them in (see the module's note).
pub fn step_variables(gpus: &[String]) -> Vec<(&'static str, String)> {
    let mut vars = vec![("CUDA_VISIBLE_DEVICES", gpus.join(","))];
    if gpus.iter().any(|g| g.bytes().all(|b| b.is_ascii_digit())) {
        vars.push(("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()));
    }
    vars
}

/// The devices a `CUDA_VISIBLE_DEVICES` value names: indices or UUIDs, comma
/// separated. CUDA stops at the first invalid entry, and a negative index hides
/// every device from there on ("-1" means none); so do we.
pub fn parse_visible_devices(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        let valid = !item.is_empty()
            && !item.starts_with('-')
            && (item.bytes().all(|b| b.is_ascii_digit())
                || item.starts_with("GPU-")
                || item.starts_with("MIG-"));
        if !valid {
            break;
        }
        out.push(item.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_given_indices_numbers_gpus_as_nvml_does() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            step_variables(&names(&["0", "2"])),
            [
                ("CUDA_VISIBLE_DEVICES", "0,2".to_string()),
                ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string())
            ]
        );
        assert_eq!(
            step_variables(&names(&["GPU-8e6c", "MIG-12"])),
            [("CUDA_VISIBLE_DEVICES", "GPU-8e6c,MIG-12".to_string())]
        );
        // None: it sees none.
        assert_eq!(
            step_variables(&[]),
            [("CUDA_VISIBLE_DEVICES", String::new())]
        );
    }

    #[test]
    fn visible_devices_as_cuda_reads_them() {
        assert_eq!(parse_visible_devices("0,1,3"), ["0", "1", "3"]);
        assert_eq!(parse_visible_devices(" 2 , 0 "), ["2", "0"]);
        assert!(parse_visible_devices("").is_empty());
        assert!(parse_visible_devices("-1").is_empty());
        assert_eq!(parse_visible_devices("0,-1,1"), ["0"]);
        assert_eq!(parse_visible_devices("NoDevFiles"), Vec::<String>::new());
        assert_eq!(
            parse_visible_devices("GPU-8e6c1a2b-0000,MIG-1234"),
            ["GPU-8e6c1a2b-0000", "MIG-1234"]
        );
    }
}
