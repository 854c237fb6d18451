mod cgroup_layouts;
mod docker_inject;
mod docker_registry;
mod final_cpu;
mod stream;
