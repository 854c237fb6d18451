mod cgroup_layouts;
