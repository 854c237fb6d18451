mod cgroup_layouts;
mod docker_inject;
mod docker_registry;
mod stream;
