"""Running the project: the command line and what it calls (secrets setup, serving the
deployments locally, the deployments' pull step, the demo)."""
