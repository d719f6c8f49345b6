"""`condense push`: an artifact to a Hugging Face Hub model repo, private by default.

Every way it can fail (offline, no token, a refused token, no network) ends in one line
that says what to do, and never touches the local artifact, which is only read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from condense.artifact import (
    ADAPTER_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    read_config,
    read_json_object,
)
from condense.config import check_hub_repo
from condense.files import leads_out
from condense.network import hub_offline, reachable


class PushError(RuntimeError):
    """A push that did not happen; the message is one line for the user."""


def push_token(repo: str) -> str:
    """The token a push to `repo` would use: HF_TOKEN, else the one `hf auth login` saved;
    PushError where there is none, or where HF_HUB_OFFLINE is set (no push can happen).
    Training asks before it starts, so a run that ends in a push does not find out after
    hours that it cannot."""
    from huggingface_hub import get_token

    if hub_offline():
        raise PushError(
            f"cannot push to {repo}: hub_repo needs the Hub, and HF_HUB_OFFLINE is set;"
            " unset it, or leave hub_repo out and `condense push` the artifact later"
        )
    token = get_token()
    if not token:
        raise PushError(
            f"cannot push to {repo}: set HF_TOKEN to a token with write access, or log in"
            " with `hf auth login`"
        )
    return token


def push_artifact(folder: Path, repo: str, public: bool = False) -> str:
    """Upload the artifact in `folder` to the model repo `repo` (OWNER/NAME), creating it
    private unless `public`, with push_token's token. Returns the repo's URL.
    A ConfigError for a `repo` that is no OWNER/NAME, PushError for a push that failed."""
    from huggingface_hub import HfApi, constants

    # HTTPError is the base of the transport errors (a dropped connection, a timeout) of
    # huggingface_hub's own HTTP client: httpx's up to 1.x, httpx2's from 2.0.
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    folder = Path(folder)
    check_hub_repo(repo, "--repo")
    config = read_config(folder)  # refuse anything but an artifact before any network call
    check_no_links_out(folder, repo)
    check_whole(folder, repo)
    if hub_offline():
        raise PushError(f"cannot push to {repo}: HF_HUB_OFFLINE is set; {folder} is unchanged")
    token = push_token(repo)
    endpoint = without_credentials(constants.ENDPOINT)
    if not reachable(constants.ENDPOINT):
        raise PushError(f"cannot push to {repo}: {endpoint} does not answer; {folder} is unchanged")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=not public, exist_ok=True, repo_type="model")
        # create_repo keeps an existing repo's visibility, whatever `private` says.
        if not public and api.repo_info(repo, repo_type="model").private is False:
            raise PushError(
                f"{repo} exists and is public, and this push is private: give --public (a"
                " job: hub_public: true) to publish it there, or name another repo;"
                " nothing was uploaded"
            )
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="condense artifact")
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", "?")
        raise PushError(
            f"the Hub refused the push to {repo} (HTTP {status}); {folder} is unchanged"
        ) from None
    except (OSError, HTTPError) as err:
        raise PushError(
            f"push to {repo} failed ({type(err).__name__}); {folder} is unchanged"
        ) from None
    local = [f"{role} {config[role]}" for role in ("encoder", "decoder") if _local(config[role])]
    if local:
        # Recorded by their absolute paths (config.model_name), they load only where they are.
        print(
            f"condense: note: the artifact names local model folders ({', '.join(local)}):"
            " it loads only where those exist; train on Hub ids for one that loads anywhere",
            file=sys.stderr,
        )
    return f"{endpoint}/{repo}"


def check_whole(folder: Path, repo: str) -> None:
    """PushError for an artifact whose weights or adapter config do not read: read_config
    only looks for the files, and a copy cut short went up as it stood. The safetensors
    headers are read, not the tensors (gigabytes on a large job): a file cut short no
    longer covers what its header lists."""
    from safetensors import SafetensorError, safe_open

    try:
        for name in (ADAPTER_FILE, WEIGHTS_FILE):
            try:
                with safe_open(folder / name, "pt"):
                    pass
            except SafetensorError as err:
                raise ArtifactError(f"{folder / name}: damaged or incomplete ({err})") from None
        # condense does not read it, but whoever loads the repo with peft does.
        read_json_object(folder / "adapter_config.json")
    except ArtifactError as err:
        raise PushError(f"cannot push to {repo}: {err}; export it again") from None


def check_no_links_out(folder: Path, repo: str) -> None:
    """PushError for a symbolic link in `folder` to anything outside it: the upload would
    send what it points to (a link left in a shared artifact, to ~/.cache/huggingface/token,
    would publish the token). A Hub-cache snapshot's links to its blobs are taken."""
    for where, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(where, name)
            if leads_out(entry, folder):
                raise PushError(
                    f"cannot push to {repo}: {entry} is a link to {entry.resolve()}, outside"
                    " the artifact, which the upload would send: copy the file in, or remove"
                    " the link"
                )


def without_credentials(url: str) -> str:
    """`url` without a user:password part (an HF_ENDPOINT may carry one), for messages
    and summary.json."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _local(name: str) -> bool:
    """Whether an artifact's model name is a local folder's path, not a Hub id."""
    return Path(name).is_absolute()
