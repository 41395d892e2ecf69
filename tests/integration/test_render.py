"""Job-script rendering, checked by running the generated scripts with bash (and once with sbatch)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml

from ci_runner.ci import CIContext
from ci_runner.config import Config
from ci_runner.errors import ConfigError
from ci_runner.matrix import Entry
from ci_runner.job_spec import CHECKOUT_FAILED, CHECKOUT_FAILED_LINE, JOB_END_LINE, JobSpec
from ci_runner.render import heredoc_delimiter, job_scripts

SHA = "0123456789abcdef0123456789abcdef01234567"


def one_job_script(config: Config, entry: Entry, ci: CIContext, workdir: str, environ: dict[str, str],
                   **options: object) -> JobSpec:
    """The job script of one entry, as the run renders it (`job_scripts` of that entry alone)."""
    return job_scripts(config, [entry], ci, workdir, environ, **options)[0]  # type: ignore[arg-type]

HOSTILE = [
    "$(touch {canary})",
    "`touch {canary}`",
    "'; touch {canary}; '",
    '"; touch {canary}; "',
    "a;touch {canary}",
    "a|touch {canary}",
    "a && touch {canary}",
    "x\ntouch {canary}\ny",
    "${{IFS}}touch${{IFS}}{canary}",
    "  two  spaces  ",
    "tab\there",
    "\\",
    "*",
    "~",
    "-n",
    "",
    "ünïcödé 漢字",
    "EOF",
]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


def make_config(tmp_path: Path, **fields: Any) -> Config:
    fields.setdefault("script", "true\n")
    fields.setdefault("checkout", "none")
    return Config(path=tmp_path / ".ci-runner.yml", system="local", **fields)


def make_entry(values: Mapping[str, Any] | None = None, sbatch: Mapping[str, Any] | None = None,
               name: str = "gcc-4", index: int = 0) -> Entry:
    return Entry(name=name, index=index, values=dict(values or {}), sbatch=dict(sbatch or {}), system="local")


def make_ci(**fields: Any) -> CIContext:
    base: dict[str, Any] = dict(provider="local", sha=SHA, ref="refs/heads/main",
                                repo_url="https://example.org/r.git", run_id="run-1")
    base.update(fields)
    return CIContext(**base)


def run(spec: JobSpec, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the generated script as Slurm would: bash, working directory = the entry root."""
    Path(spec.layout.root).mkdir(parents=True, exist_ok=True)
    script = tmp_path / "job.sbatch"
    script.write_text(spec.script)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    return subprocess.run(["bash", str(script)], cwd=spec.layout.root, env=env, capture_output=True, timeout=60)


def nul_fields(output: bytes) -> list[str]:
    assert output.endswith(b"\0"), output
    return output[:-1].decode().split("\0")


# ---------------------------------------------------------------- hostile values stay inert


def test_hostile_values_stay_inert_and_round_trip(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    values = [v.format(canary=canary) for v in HOSTILE]
    matrix = {f"v{i}": v for i, v in enumerate(values)}
    printed = " ".join(f"{{{{ v{i} }}}} {{{{ matrix.v{i} }}}} {{{{ v{i} | shquote }}}}" for i in range(len(values)))
    script = (
        f"printf '%s\\0' {printed}\n"
        "printf '%s\\0' {{ ci.ref }} {{ ci.repo }} {{ ci.sha }} {{ env.HOSTILE_ENV }}\n"
        'printf \'%s\\0\' "$CI_RUNNER_REF" "$CI_RUNNER_REPO" "$FROM_CONFIG"\n'
    )
    hostile = values[0] + values[7]
    config = make_config(tmp_path, script=script, pass_env=("HOSTILE_ENV",), env={"FROM_CONFIG": hostile})
    ci = make_ci(ref=f"refs/heads/{hostile}", repo_url=f"https://example.org/{values[2]}.git")
    spec = one_job_script(config, make_entry(matrix), ci, str(tmp_path / "work"), {"HOSTILE_ENV": hostile})

    done = run(spec, tmp_path)

    assert done.returncode == 0, done.stderr
    assert not canary.exists()
    expected = [v for v in values for _ in range(3)]
    expected += [ci.ref, ci.repo_url, SHA, hostile, ci.ref, ci.repo_url, hostile]
    assert nul_fields(done.stdout) == expected


def test_raw_filter_is_not_quoted_so_the_harness_can_see_injection(tmp_path: Path) -> None:
    """Control for the test above: an unquoted value does execute, and the canary check notices."""
    canary = tmp_path / "CANARY"
    config = make_config(tmp_path, script="echo {{ v | raw }}\n")
    spec = one_job_script(config, make_entry({"v": f"$(touch {canary})"}), make_ci(), str(tmp_path / "w"), {})
    assert run(spec, tmp_path).returncode == 0
    assert canary.exists()


def test_body_lines_that_look_like_delimiters_are_kept(tmp_path: Path) -> None:
    body = "cat <<'EOF'\nCI_RUNNER_EOF_0000000000000000\n'EOF'\nEOF\necho two\n"
    script = "{% raw %}" + body + "{% endraw %}"
    spec = one_job_script(make_config(tmp_path, script=script), make_entry(), make_ci(), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert (done.returncode, done.stdout) == (0, b"CI_RUNNER_EOF_0000000000000000\n'EOF'\ntwo\n")
    assert heredoc_delimiter(body) not in body.split("\n")


def test_script_without_trailing_newline(tmp_path: Path) -> None:
    spec = one_job_script(make_config(tmp_path, script="echo last"), make_entry(), make_ci(), str(tmp_path / "w"), {})
    assert run(spec, tmp_path).stdout == b"last\n"


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "script, code",
    [
        ("echo ok\n", 0),
        ("exit 3\n", 3),
        ("false\necho not reached\n", 1),
        ("false | true\necho not reached\n", 1),
        ("kill -TERM $$\n", 143),
    ],
)
def test_user_exit_status_becomes_the_job_status(tmp_path: Path, script: str, code: int) -> None:
    spec = one_job_script(make_config(tmp_path, script=script), make_entry(), make_ci(), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert done.returncode == code, done.stderr
    assert b"not reached" not in done.stdout


@pytest.mark.parametrize("script, code", [("echo ok\n", 0), ("echo partial; exit 3\n", 3), ("kill -TERM $$\n", 143)])
def test_job_end_line_is_the_last_output_and_keeps_the_status(tmp_path: Path, script: str, code: int) -> None:
    """The runner watches for this line to check the job state early; the status is the job's."""
    spec = one_job_script(make_config(tmp_path, script=script), make_entry(), make_ci(), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.decode().endswith(f"{JOB_END_LINE}{code}\n"), done.stderr
    assert JOB_END_LINE.encode() not in done.stdout


def test_failed_checkout_prints_the_checkout_marker(tmp_path: Path) -> None:
    config = make_config(tmp_path, script="echo never\n", checkout="upload")
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert done.returncode == CHECKOUT_FAILED
    assert done.stderr.decode().endswith(f"{CHECKOUT_FAILED_LINE}cannot extract the uploaded archive\n"), done.stderr
    assert JOB_END_LINE.encode() not in done.stderr


def test_user_script_runs_in_src_with_the_ci_runner_variables(tmp_path: Path) -> None:
    script = 'pwd; echo "$CI_RUNNER_ENTRY $CI_RUNNER_RUN_ID $CI_RUNNER_PROVIDER $CI_RUNNER_SHA $OMP_NUM_THREADS"\n'
    config = make_config(tmp_path, script=script, env={"OMP_NUM_THREADS": "2"})
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {})
    lines = run(spec, tmp_path).stdout.decode().splitlines()
    assert lines == [spec.layout.src, f"gcc-4 run-1 local {SHA} 2"]
    assert spec.env == {"CI_RUNNER_ENTRY": "gcc-4", "CI_RUNNER_RUN_ID": "run-1"}


# ---------------------------------------------------------------- checkout


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, str, str]:
    """A real repository with two commits; returns (path, first sha, second sha)."""
    path = tmp_path / "origin"
    path.mkdir()
    git(path, "init", "-q")
    (path / "version.txt").write_text("first\n")
    git(path, "add", "version.txt")
    git(path, "commit", "-q", "-m", "first")
    first = git(path, "rev-parse", "HEAD")
    (path / "version.txt").write_text("second\n")
    git(path, "commit", "-q", "-am", "second")
    return path, first, git(path, "rev-parse", "HEAD")


def test_clone_checks_out_the_exact_sha(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    path, first, second = origin
    canary = tmp_path / "CANARY"
    config = make_config(tmp_path, checkout="clone", script="git rev-parse HEAD\ncat version.txt\n")
    ci = make_ci(sha=first, repo_url=path.as_uri(), ref=f"refs/heads/$(touch {canary})")
    spec = one_job_script(config, make_entry(), ci, str(tmp_path / "w"), {})

    done = run(spec, tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{first}\nfirst\n"
    assert first != second and not canary.exists()
    # A requeued job runs the script again over the old checkout.
    assert run(spec, tmp_path).stdout.decode() == f"{first}\nfirst\n"


def test_config_env_cannot_disturb_the_checkout(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    path, first, _ = origin
    config = make_config(tmp_path, checkout="clone", script='echo "$PATH"\n', env={"PATH": "/nowhere"})
    spec = one_job_script(config, make_entry(), make_ci(sha=first, repo_url=path.as_uri()), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert (done.returncode, done.stdout) == (0, b"/nowhere\n"), done.stderr


def test_clone_of_a_missing_commit_fails_as_checkout(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    path, _, _ = origin
    config = make_config(tmp_path, checkout="clone", script="echo user script ran\n")
    spec = one_job_script(config, make_entry(), make_ci(sha="f" * 40, repo_url=path.as_uri()), str(tmp_path / "w"), {})
    done = run(spec, tmp_path)
    assert done.returncode == CHECKOUT_FAILED
    assert b"ci-runner: checkout failed: cannot fetch commit " + b"f" * 40 in done.stderr
    assert b"user script ran" not in done.stdout


def test_upload_extracts_the_archive(tmp_path: Path) -> None:
    config = make_config(tmp_path, checkout="upload", script="cat data/hello.txt\n")
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {})
    Path(spec.layout.root).mkdir(parents=True)
    with tarfile.open(spec.layout.archive, "w:gz") as archive:
        content = b"hello from the archive\n"
        info = tarfile.TarInfo("data/hello.txt")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    done = run(spec, tmp_path)
    assert (done.returncode, done.stdout) == (0, b"hello from the archive\n")


def test_upload_without_archive_fails_as_checkout(tmp_path: Path) -> None:
    config = make_config(tmp_path, checkout="upload")
    done = run(one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}), tmp_path)
    assert done.returncode == CHECKOUT_FAILED
    assert b"cannot extract the uploaded archive" in done.stderr


def _tar_gz(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _upload_plan(tmp_path: Path, files: Mapping[str, bytes], cap: int = 400) -> tuple[Config, Any]:
    """A config with `checkout: upload` and the run's source plan, its parts written where the runner uploads them."""
    from ci_runner.layout import run_layout
    from ci_runner.transfer import plan_source
    from ci_runner.source_archive import SourceArchive

    data = _tar_gz(files)
    plan = plan_source(SourceArchive(SHA, data, False), run_layout(str(tmp_path / "w"), "run-1"), cap)
    Path(plan.parts[0].path).parent.mkdir(parents=True, exist_ok=True)
    for part in plan.parts:
        Path(part.path).write_bytes(data[part.offset:part.offset + part.size])
    return make_config(tmp_path, checkout="upload", script="cat data/a.bin | sha256sum\n"), plan


def test_upload_joins_the_parts_into_the_cache_and_the_next_job_uses_the_cache(tmp_path: Path) -> None:
    """The job checks and joins the run's parts into <workdir>/sources/ (complete, with its .sha256,
    no temporary file left), removes the parts and extracts; a second job finds the cache alone."""
    import hashlib

    content = os.urandom(3000)  # incompressible: several parts of 399 bytes
    config, plan = _upload_plan(tmp_path, {"data/a.bin": content})
    assert len(plan.parts) > 5
    first = run(one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, source=plan), tmp_path)
    expected = hashlib.sha256(content).hexdigest().encode() + b"  -\n"
    assert (first.returncode, first.stdout) == (0, expected), first.stderr
    cache = Path(plan.cached)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name, cache.name + ".sha256"]
    assert cache.with_name(cache.name + ".sha256").read_text() == f"{plan.sha256}  {cache.name}\n"
    assert not any(Path(part.path).exists() for part in plan.parts)
    second = run(one_job_script(config, make_entry(name="gcc-5"), make_ci(), str(tmp_path / "w"), {}, source=plan),
                 tmp_path)
    assert (second.returncode, second.stdout) == (0, expected), second.stderr


def test_a_corrupt_part_fails_the_checkout_naming_the_part(tmp_path: Path) -> None:
    config, plan = _upload_plan(tmp_path, {"data/a.bin": os.urandom(3000)})
    bad = Path(plan.parts[2].path)
    bad.write_bytes(b"X" + bad.read_bytes()[1:])
    done = run(one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, source=plan), tmp_path)
    assert done.returncode == CHECKOUT_FAILED
    line = done.stderr.decode().splitlines()[0]
    assert line.startswith(f"ci-runner: checkout failed: source part source.tar.gz.part002 of {len(plan.parts)} "
                           "is corrupt: sha256 "), line
    assert not Path(plan.cached).exists() and list(Path(plan.cached).parent.iterdir()) == []  # no temp file left


def test_a_corrupt_cached_archive_is_removed_and_fails_the_checkout(tmp_path: Path) -> None:
    config, plan = _upload_plan(tmp_path, {"data/a.bin": b"x"})
    Path(plan.cached).parent.mkdir(parents=True)
    Path(plan.cached).write_bytes(b"not the archive")
    done = run(one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, source=plan), tmp_path)
    assert done.returncode == CHECKOUT_FAILED
    assert b"the cached source archive " + plan.cached.encode() + b" is corrupt" in done.stderr
    assert not Path(plan.cached).exists()


def test_cache_retention_removes_files_unused_for_a_week(tmp_path: Path) -> None:
    from ci_runner.transfer import CACHE_RETENTION_DAYS

    config, plan = _upload_plan(tmp_path, {"data/a.bin": b"x"})
    sources = Path(plan.cached).parent
    sources.mkdir(parents=True)
    old, recent = sources / ("b" * 40 + "-0.tar.gz"), sources / ("c" * 40 + "-0.tar.gz")
    old.write_bytes(b"old")
    recent.write_bytes(b"recent")
    week = time.time() - (CACHE_RETENTION_DAYS + 1) * 86400
    os.utime(old, (week, week))
    done = run(one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, source=plan), tmp_path)
    assert done.returncode == 0, done.stderr
    assert not old.exists() and recent.exists() and Path(plan.cached).exists()


def test_large_artifacts_are_split_into_parts_with_their_sha256(tmp_path: Path) -> None:
    """After the user's script (its status kept), files matching an artifact or JUnit glob that are
    over one download and within max_artifact_size are split into parts with the whole file's sha256."""
    import hashlib

    from ci_runner.transfer import artifact_checksum, artifact_part, artifact_parts_dir, download_part_size

    cap = 1000
    part = download_part_size(cap)
    script = ("mkdir -p out/deep results\n"
              f"head -c {3 * part + 5} /dev/urandom > out/deep/big.bin\n"
              f"head -c {part} /dev/urandom > out/small.bin\n"      # one download: no parts
              f"head -c {4 * part} /dev/urandom > out/huge.bin\n"   # over max_artifact_size
              f"head -c {2 * part} /dev/urandom > other.bin\n"      # no glob matches
              f"head -c {2 * part} /dev/urandom > results/r.xml\n"
              "exit 3\n")
    config = make_config(tmp_path, script=script, artifacts=("out/**/*.bin",), junit=("results/*.xml",),
                         max_artifact_size=3 * part + 5)
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, output_cap=cap)
    done = run(spec, tmp_path)
    assert done.returncode == 3, done.stderr
    parts = artifact_parts_dir(spec.layout)
    src = Path(spec.layout.src)
    for relative, count in (("out/deep/big.bin", 4), ("results/r.xml", 2)):
        data = (src / relative).read_bytes()
        pieces = [Path(artifact_part(parts, relative, i)).read_bytes() for i in range(count)]
        assert b"".join(pieces) == data and all(len(piece) <= part for piece in pieces)
        assert not Path(artifact_part(parts, relative, count)).exists()
        assert Path(artifact_checksum(parts, relative)).read_text().split()[0] == hashlib.sha256(data).hexdigest()
    made = sorted(str(p.relative_to(parts)) for p in Path(parts).rglob("*.sha256"))
    assert made == ["out/deep/big.bin.sha256", "results/r.xml.sha256"]


def _bundled(spec: JobSpec) -> list[str] | None:
    from ci_runner.transfer import artifact_bundle

    path = Path(artifact_bundle(spec.layout))
    if not path.exists():
        return None
    with tarfile.open(path) as archive:
        assert all(member.isreg() for member in archive.getmembers())
        return sorted(archive.getnames())


def test_small_artifacts_are_packed_into_one_tar_for_one_download(tmp_path: Path) -> None:
    """When every file an artifact or JUnit glob may match is a regular file of one download at most,
    the job packs them (a superset of the exact matches: the runner picks) into one tar; an earlier
    attempt's tar is removed before the user's script runs, and the script's status is kept."""
    from ci_runner.transfer import artifact_bundle

    script = ("mkdir -p results/deep out\n"
              "echo one > results/a.txt\necho two > results/deep/b.txt\necho '<x/>' > results/junit-1.xml\n"
              "echo no > out/c.txt\necho no > d.txt\n"
              "test ! -e ../artifacts.tar || exit 9\n"  # the script runs in src/, beside which the tar lies
              "exit 3\n")
    config = make_config(tmp_path, script=script, artifacts=("results/*.txt",), junit=("results/*.xml",))
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {})
    bundle = Path(artifact_bundle(spec.layout))
    assert bundle.parent == Path(spec.layout.src).parent
    bundle.parent.mkdir(parents=True)
    bundle.write_text("an earlier attempt's")
    done = run(spec, tmp_path)
    assert done.returncode == 3, done.stderr
    assert _bundled(spec) == ["results/a.txt", "results/deep/b.txt", "results/junit-1.xml"]
    assert not list(bundle.parent.glob("artifacts.tar.*"))  # no list or temporary file left


@pytest.mark.parametrize("make, why", [
    ("ln -s a.txt results/link.txt", "a link (the runner follows links in a listing)"),
    ("mkfifo results/pipe.txt", "not a regular file"),
    ("head -c 2000 /dev/zero > results/big.txt", "over one download (its parts are fetched apart)"),
])
def test_no_tar_when_a_candidate_is_not_a_small_regular_file(tmp_path: Path, make: str, why: str) -> None:
    config = make_config(tmp_path, script=f"mkdir -p results\necho one > results/a.txt\n{make}\n",
                         artifacts=("results/*.txt",))
    spec = one_job_script(config, make_entry(), make_ci(), str(tmp_path / "w"), {}, output_cap=1000)
    done = run(spec, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _bundled(spec) is None, why


@pytest.mark.parametrize("glob", ["results/*.xml", "**/*.xml", "a b/[xy]?.txt", "./x/**", "weird$(id)'\"/*.log"])
def test_case_patterns_match_at_least_what_the_glob_matches(glob: str, tmp_path: Path) -> None:
    from ci_runner.render import _case_pattern
    from ci_runner.artifact_selection import glob_regex

    paths = ["results/a.xml", "a.xml", "d/e/f.xml", "a b/xq.txt", "x/y/z", "weird$(id)'\"/1.log", "no.txt"]
    matching = [p for p in paths if glob_regex(glob.removeprefix("./")).fullmatch(p)]
    assert matching
    pattern = _case_pattern(glob)
    checks = "".join(f"case {_shell_word(p)} in {pattern}) echo yes ;; *) echo no ;; esac\n" for p in matching)
    done = subprocess.run(["bash", "-c", checks], capture_output=True, text=True, timeout=10)
    assert done.stdout.split() == ["yes"] * len(matching), (pattern, done.stderr)


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ---------------------------------------------------------------- template context and errors


def write_config(tmp_path: Path, text: str, **fields: Any) -> Config:
    path = tmp_path / ".ci-runner.yml"
    path.write_text(text)
    data = yaml.safe_load(text)
    return Config(path=path, system="local", script=data.get("script"), checkout="none", **fields)


def render_error(config: Config, entry: Entry | None = None, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        job_scripts(config, [entry or make_entry({"compiler": "gcc"})], make_ci(), "/w", environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_undefined_variable_in_inline_script_names_the_config_line(tmp_path: Path) -> None:
    text = "version: 1\nsystem: local\nscript: |\n  module load {{ compiler }}\n  srun -n {{ ranks }} ./t\n"
    message = render_error(write_config(tmp_path, text))
    assert message.startswith(f"{tmp_path / '.ci-runner.yml'}:5: script line 2: ")
    assert "'ranks' is undefined" in message and "template variables: compiler, matrix" in message


def test_syntax_error_in_inline_script_names_the_config_line(tmp_path: Path) -> None:
    text = "system: local\nscript: |\n  echo ok\n\n  {% if compiler %}\n  echo {{ compiler\n"
    message = render_error(write_config(tmp_path, text))
    assert message.startswith(f"{tmp_path / '.ci-runner.yml'}:6: script line 4: ")


def test_single_line_inline_script(tmp_path: Path) -> None:
    message = render_error(write_config(tmp_path, "system: local\nscript: 'echo {{ nope }}'\n"))
    assert message.startswith(f"{tmp_path / '.ci-runner.yml'}:2: script line 1: ")


def test_inline_script_line_without_a_config_file(tmp_path: Path) -> None:
    message = render_error(make_config(tmp_path, script="echo\necho {{ nope }}\n"))
    assert message.startswith(f"{tmp_path / '.ci-runner.yml'}: script line 2: ")


def test_template_file_errors_name_the_template_and_line(tmp_path: Path) -> None:
    template = tmp_path / "ci" / "job.sh.j2"
    template.parent.mkdir()
    template.write_text("echo one\necho {{ compiler }}\necho {{ entry.nmae }}\n")
    config = Config(path=tmp_path / ".ci-runner.yml", system="local", template=template, checkout="none")
    assert render_error(config).startswith(f"{template}:3: ")

    template.write_text("echo one\n{% for x in %}\n")
    assert render_error(config).startswith(f"{template}:2: ")

    (tmp_path / "ci" / "part.sh.j2").write_text("ok\n{{ missing }}\n")
    template.write_text("{% include 'ci/part.sh.j2' %}\n")
    assert render_error(config).startswith(f"{tmp_path / 'ci' / 'part.sh.j2'}:2: ")


def test_templates_and_includes_stay_in_the_config_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    secret = tmp_path / "runner-credentials"
    secret.write_text("s3cret-value\n")
    (project / "link.j2").symlink_to(secret)
    for include in (str(secret), "../runner-credentials", "link.j2"):
        config = make_config(project, script=f"{{% include {include!r} %}}\n")
        message = render_error(config)
        assert "outside" in message and "s3cret" not in message, include
    outside_template = Config(path=project / ".ci-runner.yml", system="local", template=secret, checkout="none")
    assert "outside" in render_error(outside_template)

def test_missing_template_file(tmp_path: Path) -> None:
    config = Config(path=tmp_path / ".ci-runner.yml", system="local", template=tmp_path / "nope.j2")
    assert "file not found" in render_error(config)


@pytest.mark.parametrize(
    "expression",
    ["''.__class__", "''.__class__.__mro__[1].__subclasses__()", "ci.__class__", "range.__globals__"],
)
def test_sandbox_violations_are_config_errors(tmp_path: Path, expression: str) -> None:
    config = make_config(tmp_path, script="echo ok\necho {{ " + expression + " }}\n")
    message = render_error(config)
    assert message.startswith(f"{config.path}: script line 2: ") and "unsafe" in message


def test_template_context(tmp_path: Path) -> None:
    script = (
        "{{ compiler }} {{ matrix.ranks }} {{ entry.name }} {{ entry.index }} "
        "{{ ci.sha }} {{ ci.ref }} {{ ci.repo }} {{ ci.run_id }} {{ ci.provider }} {{ env | length }} {{ env.KEEP }}"
    )
    config = make_config(tmp_path, script=script, pass_env=("KEEP", "ABSENT"))
    entry = make_entry({"compiler": "gcc", "ranks": 4}, name="gcc-4", index=3)
    spec = one_job_script(config, entry, make_ci(), "/w", {"KEEP": "k", "OTHER": "o"})
    assert f"gcc 4 gcc-4 3 {SHA} refs/heads/main https://example.org/r.git run-1 local 1 k\n" in spec.script


def test_env_holds_only_pass_env_variables(tmp_path: Path) -> None:
    config = make_config(tmp_path, script="{{ env.HOME }}\n", pass_env=("KEEP",))
    message = render_error(config, environ={"HOME": "/root", "KEEP": "k"})
    assert "has no attribute 'HOME'" in message and "pass_env variables that are set: KEEP" in message


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "CI_JOB_TOKEN", "FIRECREST_CLIENT_SECRET", "DB_PASSWORD", "SSH_KEY"])
def test_secret_like_pass_env_names_are_refused(tmp_path: Path, name: str) -> None:
    assert "looks like a secret" in render_error(make_config(tmp_path, pass_env=(name,)), environ={name: "s3cr3t"})


def test_secrets_from_the_environment_never_reach_the_script(tmp_path: Path) -> None:
    environ = {"FIRECREST_CLIENT_SECRET": "s3cr3t-1", "GITHUB_TOKEN": "s3cr3t-2", "KEEP": "fine"}
    config = make_config(tmp_path, script="{{ env.KEEP }}\n", pass_env=("KEEP",))
    spec = one_job_script(config, make_entry(), make_ci(), "/w", environ)
    assert "s3cr3t" not in spec.script and "fine" in spec.script


@pytest.mark.parametrize("axis", ["ci", "env", "entry", "matrix"])
def test_matrix_axis_clashing_with_context_names(tmp_path: Path, axis: str) -> None:
    assert "clash" in render_error(make_config(tmp_path), entry=make_entry({axis: "x"}))


def test_exactly_one_of_script_and_template(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.yml", system="local")
    assert "exactly one" in render_error(config)


# ---------------------------------------------------------------- #SBATCH header


def header(spec: JobSpec) -> list[str]:
    return [line for line in spec.script.splitlines() if line.startswith("#SBATCH")]


def test_sbatch_header(tmp_path: Path) -> None:
    sbatch = {"partition": "debug", "time": "00:15:00", "nodes": 1, "exclusive": True, "requeue": False,
              "constraint": "gpu&(a|b)", "mem-per-cpu": 1.5}
    config = make_config(tmp_path, account="g123")
    spec = one_job_script(config, make_entry(sbatch=sbatch), make_ci(), "/scratch/ci", {})
    out = "/scratch/ci/run-1/output/gcc-4.%j.out"
    assert header(spec) == [
        "#SBATCH --job-name=ci-runner-run-1",
        f"#SBATCH --output={out}",
        f"#SBATCH --error={out}",
        "#SBATCH --account=g123",
        "#SBATCH --partition=debug",
        "#SBATCH --time=00:15:00",
        "#SBATCH --nodes=1",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=gpu&(a|b)",
        "#SBATCH --mem-per-cpu=1.5",
    ]
    assert spec.script.startswith("#!/bin/bash\n#SBATCH ")
    assert spec.job_name == "ci-runner-run-1"  # the run's: one job list answers for every entry
    other_entry = one_job_script(config, make_entry(name="clang-4", sbatch=sbatch), make_ci(), "/scratch/ci", {})
    assert other_entry.job_name == spec.job_name
    other_run = one_job_script(config, make_entry(sbatch=sbatch), make_ci(run_id="run-2"), "/scratch/ci", {})
    assert other_run.job_name == "ci-runner-run-2" and f"--job-name={other_run.job_name}" in other_run.script


def test_entry_account_overrides_config_account(tmp_path: Path) -> None:
    spec = one_job_script(make_config(tmp_path, account="g1"), make_entry(sbatch={"account": "g2"}), make_ci(), "/w", {})
    assert [line for line in header(spec) if "account" in line] == ["#SBATCH --account=g2"]


@pytest.mark.parametrize(
    "value",
    [
        "debug\n#SBATCH --wrap=touch /tmp/x",
        "debug\ntouch /tmp/x",
        "debug\r--wrap=x",
        "de\0bug",
        "debug --wrap=x",
        "debug\t--wrap=x",
        "'debug'",
        '"debug"',
        "debug#x",
        "debug\\",
        "",
        "débug",
    ],
)
def test_sbatch_values_that_sbatch_could_misparse_are_rejected(tmp_path: Path, value: str) -> None:
    message = render_error(make_config(tmp_path), entry=make_entry(sbatch={"partition": value}))
    assert "sbatch.partition (entry gcc-4)" in message and "not allowed" in message


@pytest.mark.parametrize("name", ["cpus_per_task", "--time", "time=1", "a b", "x\n#SBATCH --wrap", ""])
def test_sbatch_bad_option_names(tmp_path: Path, name: str) -> None:
    message = render_error(make_config(tmp_path), entry=make_entry(sbatch={name: "1"}))
    assert "not a long sbatch option name" in message
    if name == "cpus_per_task":
        assert "did you mean 'cpus-per-task'" in message


@pytest.mark.parametrize("name", ["output", "error", "job-name", "chdir", "wrap", "array"])
def test_options_ci_runner_owns_cannot_be_set(tmp_path: Path, name: str) -> None:
    assert "set by ci-runner" in render_error(make_config(tmp_path), entry=make_entry(sbatch={name: "x"}))


@pytest.mark.parametrize("name, value, problem", [
    ("BAD-NAME", "x", "env: 'BAD-NAME' is not a usable environment variable name"),
    ("CI_RUNNER_SHA", "x", "env: 'CI_RUNNER_SHA' is not a usable environment variable name"),
    ("OK", "a\0b", "env.OK: value contains a NUL byte"),
], ids=["BAD-NAME-x", "CI_RUNNER_SHA-x", "OK-a\x00b"])
def test_bad_config_env(tmp_path: Path, name: str, value: str, problem: str) -> None:
    config = make_config(tmp_path, env={name: value})
    assert render_error(config) == f"{config.path}: {problem}"


def test_one_spec_per_entry_in_order(tmp_path: Path) -> None:
    entries = [make_entry({"c": c}, name=f"e{i}", index=i) for i, c in enumerate(["gcc", "clang"])]
    specs = job_scripts(make_config(tmp_path, script="echo {{ c }}\n"), entries, make_ci(), "/w", {})
    assert [(s.entry.name, s.layout.root) for s in specs] == [("e0", "/w/run-1/e0"), ("e1", "/w/run-1/e1")]
    assert "echo gcc\n" in specs[0].script and "echo clang\n" in specs[1].script


# ---------------------------------------------------------------- real sbatch


def _scontrol(job_id: str) -> dict[str, str]:
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=15)
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


@pytest.mark.slurm
def test_sbatch_runs_the_script_and_keeps_the_exit_code(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    value = f"$(touch {canary}) 'q' \"d\" `x`"
    config = make_config(tmp_path, script="printf '%s\\n' {{ v }} \"$CI_RUNNER_REF\"\nexit 3\n")
    ci = make_ci(ref=f"refs/heads/{value}")
    spec = one_job_script(config, make_entry({"v": value}, sbatch={"time": "00:02:00"}), ci, str(tmp_path / "w"), {})
    Path(spec.layout.working_dir).mkdir(parents=True)  # the run's set-up; the job makes its entry dir
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={spec.layout.working_dir}"],
        input=spec.script, capture_output=True, text=True, timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 90
        info = _scontrol(job_id)
        while info.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {info.get('JobState')}"
            time.sleep(0.2)
            info = _scontrol(job_id)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=15)
    assert info["JobName"] == spec.job_name == "ci-runner-run-1"
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "3:0")
    assert info["StdOut"] == spec.layout.output_path(job_id) == info["StdErr"]
    # stdout and stderr share the file: the job-end line (stderr) comes last.
    assert Path(spec.layout.output_path(job_id)).read_text() == f"{value}\n{ci.ref}\n{JOB_END_LINE}3\n"
    assert not canary.exists()
