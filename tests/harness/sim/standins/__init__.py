"""Programs installed into a test host (snap, microk8s, systemctl, nvidia-smi, npu-smi, ufw,
firewall-cmd). Each module has main(argv) -> exit code; bin wrappers in the host call it."""
