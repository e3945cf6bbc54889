"""`kubeagents probe`, registered in the `kubeagents.commands` entry point group."""

from kubeagents.commands import Command
from kubeagents_probe.settings import ProbeSettings

COMMAND = Command(
    name="probe",
    summary="The semantic-probe sidecar: asks the model a validator question through the "
    "proxy (once per interval per agent) and checks the path; answers /readyz.",
    settings=ProbeSettings,
    entry_point="kubeagents_probe.command:serve_probe",
)
