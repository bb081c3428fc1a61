//! The GPUs this machine offers to steps, named as `CUDA_VISIBLE_DEVICES` names
//! them. A step that asks for `gpus=N` is given N of these names, not shared
//! with any other running step, in its own `CUDA_VISIBLE_DEVICES`.

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
    match nvml_wrapper::Nvml::init().and_then(|nvml| nvml.device_count()) {
        Ok(n) => ((0..n).map(|i| i.to_string()).collect(), GpuSource::Nvml),
        Err(e) => (Vec::new(), GpuSource::None(e.to_string())),
    }
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
