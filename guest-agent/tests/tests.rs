mod docker_registry;
