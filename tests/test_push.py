"""Pushing an artifact: every failure is one line, non-zero, with the artifact untouched."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from condense.artifact import ArtifactError
from condense.config import ConfigError, ModelConfig
from condense.job_args import parse_train
from condense.model import Condenser
from condense.push import PushError, push_artifact, push_token
from condense.weights import load_causal_lm
from tests.conftest import main_in_a_fresh_process


@pytest.fixture
def artifact(tiny_pair, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(tmp_path / "art")
    )
    return tmp_path / "art"


def _hub_http_client():
    """The HTTP client module huggingface_hub uses: httpx up to 1.x, httpx2 from 2.0."""
    import importlib

    from huggingface_hub.errors import HTTPError

    return importlib.import_module(HTTPError.__module__.partition(".")[0])


def _fake_hub(monkeypatch, existing_public: bool | None = None) -> dict:
    """HfApi's calls recorded, for a repo that create_repo makes with the visibility asked
    for or, with `existing_public`, one that exists already, public or not."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    calls = {}
    private = None if existing_public is None else not existing_public

    def create_repo(self, repo, **kw):
        calls.update(create=(repo, kw))
        calls["private"] = kw["private"] if private is None else private

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr("condense.push.reachable", lambda url: True)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(
        HfApi, "repo_info", lambda self, repo, **kw: SimpleNamespace(private=calls["private"])
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.update(upload=kw))
    return calls


def _fingerprint(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_push_offline_fails_in_one_line_and_keeps_the_artifact(artifact, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_planted_secret_value")
    before = _fingerprint(artifact)
    out = subprocess.run(
        [sys.executable, "-m", "condense", "push", str(artifact), "--repo", "someone/condenser"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [
        f"condense: error: cannot push to someone/condenser: HF_HUB_OFFLINE is set; {artifact} is unchanged"
    ]
    assert "hf_planted_secret_value" not in out.stdout + out.stderr
    assert _fingerprint(artifact) == before


@pytest.mark.parametrize("given", ["missing", "a-file"])
def test_push_of_no_folder_says_so(given, tmp_path):
    # It listed the four files of an artifact as missing.
    (tmp_path / "a-file").write_text("notes")
    kind = "no such folder" if given == "missing" else "a file, not a folder"
    with pytest.raises(ArtifactError, match=f"^{tmp_path / given}: {kind}$"):
        push_artifact(tmp_path / given, "someone/condenser")


def _no_saved_token(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_push_without_a_token_says_how_to_give_one(artifact, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _no_saved_token(monkeypatch, tmp_path)
    with pytest.raises(PushError, match="set HF_TOKEN .*, or log in with `hf auth login`$"):
        push_artifact(artifact, "someone/condenser")


def test_push_uses_the_token_a_login_saved(monkeypatch, tmp_path):
    """It asked for HF_TOKEN of a user who had logged in with `hf auth login`."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # offline, no token would do
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "token").write_text("hf_saved_by_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    assert push_token("someone/condenser") == "hf_saved_by_login"


def test_push_to_an_unreachable_hub_fails_fast(artifact, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    before = _fingerprint(artifact)
    start = time.monotonic()
    with pytest.raises(PushError, match="does not answer"):
        push_artifact(artifact, "someone/condenser")
    assert time.monotonic() - start < 5
    assert _fingerprint(artifact) == before


def test_a_refused_token_is_one_line(artifact, monkeypatch):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr("condense.push.reachable", lambda url: True)
    client = _hub_http_client()
    response = client.Response(
        401, request=client.Request("POST", f"{constants.ENDPOINT}/api/repos/create")
    )

    def refuse(self, *args, **kwargs):
        raise HfHubHTTPError("Invalid credentials", response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(
        PushError, match=r"refused the push to someone/condenser \(HTTP 401\)"
    ) as err:
        push_artifact(artifact, "someone/condenser")
    assert "\n" not in str(err.value)


def test_a_connection_dropped_during_the_upload_is_one_line(artifact, monkeypatch):
    """huggingface_hub 2.x raises its HTTP client's (httpx2's) errors, which the push
    caught as httpx's: a dropped connection was a traceback."""
    from huggingface_hub import HfApi

    client = _hub_http_client()
    _fake_hub(monkeypatch)

    def drop(self, *args, **kwargs):
        raise client.ReadError("connection reset by peer")

    monkeypatch.setattr(HfApi, "upload_folder", drop)
    before = _fingerprint(artifact)
    with pytest.raises(PushError, match=r"^push to someone/condenser failed \(ReadError\);"):
        push_artifact(artifact, "someone/condenser")
    assert _fingerprint(artifact) == before


BAD_REPOS = ["condenser", "a/b/c", "/x", "bad name", "me/two..dots", "me/x.git", "me/-x"]


@pytest.mark.parametrize("repo", BAD_REPOS)
def test_repo_must_be_an_owner_slash_name_the_hub_accepts(artifact, repo):
    with pytest.raises(
        ConfigError, match=f"--repo '{re.escape(repo)}': (expected OWNER/NAME|not a Hub repo id)"
    ):
        push_artifact(artifact, repo)


@pytest.mark.parametrize("repo", ["bad name", "me/two..dots"])
def test_a_bad_repo_is_an_argument_error_before_anything_loads(repo):
    """It was exit status 1 (a failed push), and 'me/two..dots' got as far as the token
    check. Now: status 2 and one line, with the artifact not even read (it does not exist)
    and torch not imported."""
    argv = ["push", "no/such/artifact", "--repo", repo]
    status, torch_loaded, stderr = main_in_a_fresh_process(argv)
    assert (status, torch_loaded) == (2, False)
    [line] = stderr
    assert line.startswith(f"condense: error: --repo '{repo}': ")


def test_training_refuses_a_bad_hub_repo_before_it_trains():
    """A run used to train to the end and only then fail to push to 'bad name'."""
    with pytest.raises(ConfigError, match="hub_repo 'me/bad name': not a Hub repo id"):
        parse_train(["--test", "--hub_repo", "me/bad name"])


def test_push_creates_a_private_repo_unless_public(artifact, monkeypatch, capsys):
    calls = _fake_hub(monkeypatch)
    push_artifact(artifact, "someone/condenser")
    assert calls["create"][1]["private"] is True
    assert calls["upload"]["folder_path"] == str(artifact)
    from condense.__main__ import main

    calls.clear()
    main(["push", str(artifact), "--repo", "someone/condenser", "--public"])  # the flag
    assert calls["create"][1]["private"] is False
    # Made from local folders, it loads only where they are: the push says so.
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith("condense: note: the artifact names local model folders (encoder /")
    )


def test_a_private_push_to_an_existing_public_repo_uploads_nothing(artifact, monkeypatch):
    """create_repo keeps an existing repo's visibility: the private push was published."""
    calls = _fake_hub(monkeypatch, existing_public=True)
    with pytest.raises(PushError, match=r"someone/condenser exists and is public, .*--public"):
        push_artifact(artifact, "someone/condenser")
    assert "upload" not in calls
    push_artifact(artifact, "someone/condenser", public=True)
    assert calls["upload"]["folder_path"] == str(artifact)


def test_a_link_to_a_file_outside_the_artifact_is_refused_before_the_hub(
    artifact, tmp_path, monkeypatch
):
    """upload_folder sends what a link points to: a shared artifact's notes.txt linked to
    the Hub token published the token."""
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    (artifact / "notes.txt").symlink_to(secret)
    calls = _fake_hub(monkeypatch)
    with pytest.raises(PushError, match=r"notes.txt is a link to .*token, outside the artifact"):
        push_artifact(artifact, "someone/condenser")
    assert calls == {}


@pytest.mark.parametrize(
    ("name", "cut", "said"),
    [
        ("condenser.safetensors", 0.5, "damaged or incomplete"),
        ("adapter_model.safetensors", 0.99, "damaged or incomplete"),
        ("adapter_config.json", 0.0, r"not valid JSON"),
    ],
)
def test_a_damaged_artifact_is_refused_before_the_hub(artifact, monkeypatch, name, cut, said):
    """Only the files' presence was checked: a copy cut short went up as it stood (here it
    would have, with the Hub answering)."""
    path = artifact / name
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])
    calls = _fake_hub(monkeypatch)
    with pytest.raises(PushError, match=f"to someone/condenser: {re.escape(str(path))}: {said}"):
        push_artifact(artifact, "someone/condenser")
    assert calls == {}


def test_a_folder_named_like_a_snapshot_takes_no_link_out(artifact, tmp_path, monkeypatch):
    """Any folder under one named snapshots/ was taken for the Hub cache's, whose links
    lead out of it into blobs/: ~/snapshots/my-artifact/notes.txt published the token."""
    moved = tmp_path / "snapshots" / "my-artifact"
    moved.parent.mkdir()
    artifact.rename(moved)
    (tmp_path / "token").write_text("hf_secret")
    (moved / "notes.txt").symlink_to(tmp_path / "token")
    calls = _fake_hub(monkeypatch)
    with pytest.raises(PushError, match=r"notes.txt is a link to .*token, outside the artifact"):
        push_artifact(moved, "someone/condenser")
    assert calls == {}


def test_a_hub_cache_snapshot_whose_files_link_to_its_blobs_pushes(artifact, tmp_path, monkeypatch):
    repo = tmp_path / "models--someone--condenser"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in artifact.iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / file.name)
    calls = _fake_hub(monkeypatch)
    push_artifact(snapshot, "someone/condenser")
    assert calls["upload"]["folder_path"] == str(snapshot)


def test_an_endpoint_with_a_password_is_never_shown_with_it(artifact, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(constants, "ENDPOINT", "http://alice:S3CRET@127.0.0.1:9")
    with pytest.raises(PushError, match=r"http://127.0.0.1:9 does not answer") as err:
        push_artifact(artifact, "someone/condenser")
    assert "S3CRET" not in str(err.value)
    _fake_hub(monkeypatch)
    assert push_artifact(artifact, "someone/condenser") == "http://127.0.0.1:9/someone/condenser"


@pytest.mark.parametrize("public", [False, True])
def test_training_pushes_its_best_artifact_when_a_repo_is_configured(
    public, tiny_pair, tmp_path, monkeypatch
):
    import condense.training
    from condense.training import train
    from tests.conftest import tiny_config

    pushed = []
    monkeypatch.setattr(
        condense.training,
        "push_artifact",
        lambda folder, repo, public: pushed.append((folder, repo, public)) or f"hub/{repo}",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the push is the fake above: nothing goes out
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    cfg = tiny_config(
        *tiny_pair, tmp_path / "run", max_steps=2, hub_repo="me/condenser", hub_public=public
    )
    summary = train(cfg)
    assert pushed == [(tmp_path / "run" / "artifact", "me/condenser", public)]
    assert summary["pushed_to"] == "hub/me/condenser"


def test_a_failed_push_after_training_keeps_the_run_and_says_so(tiny_pair, tmp_path, monkeypatch):
    import json

    from condense.training import train
    from tests.conftest import tiny_config

    # The Hub does not answer at the end (HF_HUB_OFFLINE is refused before training).
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("condense.push.reachable", lambda url: False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, hub_repo="me/condenser")
    with pytest.raises(PushError, match="does not answer"):
        train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["pushed_to"] is None
    assert Condenser.from_pretrained(summary["artifact"]).num_condense_tokens > 0

    # With the token fixed, the same command pushes the finished run without training it.
    import condense.training

    monkeypatch.setattr(
        condense.training, "push_artifact", lambda folder, repo, public: "hub/me/condenser"
    )
    again = train(cfg)
    assert again["pushed_to"] == "hub/me/condenser" and again["steps"] == 2
    assert again["wall_s"] == summary["wall_s"]  # the training run's summary, now pushed

    def no_second_push(folder, repo, public):
        raise AssertionError("pushed again")

    monkeypatch.setattr(condense.training, "push_artifact", no_second_push)
    assert train(cfg)["pushed_to"] == "hub/me/condenser"  # pushed once: the next re-run leaves it


def test_a_job_that_would_push_offline_stops_before_it_trains(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    """With HF_HUB_OFFLINE set it trained the whole run, then failed at the push. Said
    before the models load (minutes for a large job)."""
    import condense.training
    from tests.conftest import command_error, tiny_job

    monkeypatch.setattr(condense.training, "build", lambda *_: pytest.fail("models loaded"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=2, hub_repo="me/condenser")
    argv = ["train", "--config", str(job), "--run-dir", str(tmp_path / "run")]
    assert command_error(argv, capsys, status=1)[-1] == (
        "condense: error: cannot push to me/condenser: hub_repo needs the Hub, and"
        " HF_HUB_OFFLINE is set; unset it, or leave hub_repo out and `condense push` the"
        " artifact later"
    )
    assert not (tmp_path / "run").exists()


def test_a_job_that_would_push_without_a_token_stops_before_it_trains(
    tiny_pair, tmp_path, monkeypatch
):
    # It trained the whole run, then failed at the push.
    from condense.training import train
    from tests.conftest import tiny_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # offline is refused first
    _no_saved_token(monkeypatch, tmp_path)
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, hub_repo="me/condenser")
    with pytest.raises(PushError, match="set HF_TOKEN"):
        train(cfg)
    assert not (tmp_path / "run").exists()
