"""k8s/Dockerfile installs Kiln only through `make venv`, the target CI runs, and fits the chart.

No docker engine here, so the file is read, not built: these checks pin the promises the chart
relies on (the install path, the user, what is on PATH, what the build context keeps).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib

import yaml

from k8s_chart import CHART, REPO

DOCKERFILE = REPO / "k8s" / "Dockerfile"
DOCKERIGNORE = REPO / "k8s" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_python_packages_come_only_from_make_venv():
    runs = [args for keyword, args in instructions() if keyword == "RUN"]
    assert any(re.search(r"\bmake venv\b", run) for run in runs)
    for run in runs:
        assert not re.search(r"\bpip3? install\b|\buv pip\b|\bconda install\b", run), run
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^venv:", makefile, re.M), "the Makefile lost its venv target"


def test_base_image_is_a_build_argument_with_a_cuda_variant():
    steps = instructions()
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in DOCKERFILE.read_text()


def test_image_user_and_path_match_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    steps = dict((k, v) for k, v in instructions() if k in ("USER",))
    uid = re.search(r"KILN_UID=(\d+)", DOCKERFILE.read_text()).group(1)
    assert steps["USER"] == "${KILN_UID}:${KILN_UID}"
    assert int(uid) == values["podSecurityContext"]["runAsUser"] \
        == values["podSecurityContext"]["runAsGroup"]
    env = " ".join(v for k, v in instructions() if k == "ENV")
    # The chart runs `python`, `kiln-launch` and (TLS probes) `grpcurl` by bare name.
    assert "PATH=/opt/kiln/.venv/bin:$PATH" in env
    workdir = [v for k, v in instructions() if k == "WORKDIR"]
    assert workdir == ["/opt/kiln"]


def test_build_context_keeps_everything_make_venv_reads():
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = ["Makefile", "requirements.txt", "pyproject.toml", project["readme"],
              "sdk", "runtime_service", "builder_service", "protos"]
    for name in needed:
        for pattern in ignored:
            assert not fnmatch.fnmatch(name, pattern.removeprefix("**/")), (name, pattern)
