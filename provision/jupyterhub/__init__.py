"""The JupyterHub domain: Helm values built as data (values), the bundled Zero to JupyterHub chart
(chart), and the code that runs inside the hub pod (hub/). The engine (runner, stage, hosts, facts,
bundle) never imports this package; stages and commands do.
"""

RELEASE = "jhub"  # the Helm release name stage 70 installs and every command refers to
HOMES_PVC = "jhub-homes"  # shared homes: PV + PVC made by stage 40, mounted with subPath home/{username}
