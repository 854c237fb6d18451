mod cgroup_layouts;
mod docker_registry;
mod stream;
