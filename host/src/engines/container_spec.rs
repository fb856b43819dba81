//! An [`AgentSpec`] as the Docker Engine API's container create body (Docker and
//! Podman's compat API alike). A translation only: every decision (env, mounts, the
//! drpcli entrypoint) was taken by the host.

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HostConfig, Mount as ApiMount, MountTmpfsOptions, MountType as ApiMountType, RestartPolicy,
    RestartPolicyNameEnum,
};

use crate::engine::AgentSpec;
use crate::options::{Mount, MountType};

/// The create body for `spec`, run from `image` (the runtime's own name for it).
pub fn create_body(spec: &AgentSpec, image: &str) -> ContainerCreateBody {
    let o = &spec.options;
    let list = |items: &Vec<String>| (!items.is_empty()).then(|| items.clone());
    ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(o.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(o.labels.clone().into_iter().collect()),
        entrypoint: spec.entrypoint.clone(),
        // A replaced entrypoint runs without the image's command.
        cmd: spec.entrypoint.as_ref().map(|_| Vec::new()),
        user: o.user.clone(),
        working_dir: o.workdir.clone(),
        stop_timeout: o.stop_timeout_secs.map(i64::from),
        host_config: Some(HostConfig {
            network_mode: Some(spec.network.clone()),
            mounts: (!o.mounts.is_empty()).then(|| o.mounts.iter().map(mount).collect()),
            memory: o.memory.map(|m| m.signed()),
            memory_swap: o.memory_swap.map(|m| m.bytes()),
            // Whole nano-CPUs: 0.5 CPU is 500,000,000.
            nano_cpus: o.cpus.map(|c| (c * 1e9).round() as i64),
            pids_limit: o.pids_limit,
            shm_size: o.shm_size.map(|s| s.signed()),
            privileged: o.privileged,
            cap_add: list(&o.cap_add),
            cap_drop: list(&o.cap_drop),
            security_opt: list(&o.security_opt),
            devices: (!o.devices.is_empty()).then(|| o.devices.iter().map(|d| device(d)).collect()),
            readonly_rootfs: o.read_only_rootfs,
            init: o.init,
            extra_hosts: list(&o.extra_hosts),
            dns: list(&o.dns),
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), maximum_retry_count: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `spec`'s mounts in the Engine API's terms (containers and swarm services alike).
pub fn mounts(spec: &AgentSpec) -> Vec<ApiMount> {
    spec.options.mounts.iter().map(mount).collect()
}

fn mount(m: &Mount) -> ApiMount {
    ApiMount {
        target: Some(m.target.clone()),
        source: m.source.clone(),
        typ: Some(match m.kind {
            MountType::Bind => ApiMountType::BIND,
            MountType::Volume => ApiMountType::VOLUME,
            MountType::Tmpfs => ApiMountType::TMPFS,
        }),
        read_only: m.read_only.then_some(true),
        tmpfs_options: m.tmpfs_size.map(|size| MountTmpfsOptions { size_bytes: Some(size.signed()), ..Default::default() }),
        ..Default::default()
    }
}

/// `host[:container[:permissions]]`, as `docker run --device` splits it.
fn device(text: &str) -> DeviceMapping {
    let mut parts = text.splitn(3, ':');
    let host = parts.next().unwrap_or_default().to_string();
    let container = parts.next().filter(|p| !p.is_empty()).map_or_else(|| host.clone(), str::to_string);
    let permissions = parts.next().filter(|p| !p.is_empty()).unwrap_or("rwm").to_string();
    DeviceMapping { path_on_host: Some(host), path_in_container: Some(container), cgroup_permissions: Some(permissions) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_split_like_docker_run() {
        let d = device("/dev/fuse");
        assert_eq!(
            (d.path_on_host.as_deref(), d.path_in_container.as_deref(), d.cgroup_permissions.as_deref()),
            (Some("/dev/fuse"), Some("/dev/fuse"), Some("rwm"))
        );
        let d = device("/dev/sda:/dev/xvda:r");
        assert_eq!((d.path_in_container.as_deref(), d.cgroup_permissions.as_deref()), (Some("/dev/xvda"), Some("r")));
    }
}
