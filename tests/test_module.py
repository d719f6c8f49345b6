"""The LightningModule: the guard against NaN and infinite losses, and the wrong-context
loss that validation logs beside the real one, on the tiny pair."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from condense.__main__ import main
from condense.batches import Collator
from condense.build import build
from condense.data import tokenize
from condense.model import Condenser
from condense.module import CondenseModule
from condense.synthetic import synthetic_samples
from condense.training import train
from condense.weights import load_tokenizer
from tests.conftest import tiny_config


@pytest.mark.parametrize("batch_size", [4, 1])
def test_validation_logs_the_wrong_context_loss(batch_size, tiny_pair, tmp_path):
    """Also where training takes one sample a batch (the default job): validation batches
    hold two, so each sample has another's context to stand behind."""
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2)
    cfg.dataset.batch_size = batch_size
    train(cfg)
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    wrong, right = (header.split(",").index(name) for name in ("val_loss_wrong", "val_loss"))
    pairs = [
        (float(r.split(",")[wrong]), float(r.split(",")[right]))
        for r in rows
        if r.split(",")[wrong]
    ]
    assert len(pairs) == 2  # before step 1, and at step 2
    # Another loss than val_loss over the same targets (the tiny random pair barely reads
    # its prefix: they differ in the sixth digit); the same value would mean the samples
    # were scored behind their own contexts.
    assert all(w > 0 and w != v for w, v in pairs)


def poison(monkeypatch, bad_steps) -> None:
    """Make the training loss NaN at these (1-based) training steps; validation is left be."""
    original = Condenser.forward
    calls = itertools.count(1)

    def forward(self, batch):
        loss, targets = original(self, batch)
        if self.training and next(calls) in bad_steps:
            loss = loss * float("nan")  # backward then fills every gradient with NaN too
        return loss, targets

    monkeypatch.setattr(Condenser, "forward", forward)


def record_steps(monkeypatch) -> dict[int, dict[str, torch.Tensor]]:
    """Trainable weights and AdamW moments after each optimizer step, by global step."""
    states: dict[int, dict[str, torch.Tensor]] = {}
    original = CondenseModule.on_train_batch_end

    def record(self, outputs, batch, batch_idx):
        state = {k: v.clone() for k, v in self.condenser.trainable_state_dict().items()}
        for i, s in enumerate(self.trainer.optimizers[0].state.values()):
            state[f"exp_avg.{i}"] = s["exp_avg"].clone()
        states[self.trainer.global_step] = state
        original(self, outputs, batch, batch_idx)

    monkeypatch.setattr(CondenseModule, "on_train_batch_end", record)
    return states


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_step_is_skipped_and_changes_nothing(tiny_pair, tmp_path, monkeypatch):
    poison(monkeypatch, {3})
    states = record_steps(monkeypatch)
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=5, val_every_n_steps=5))
    assert summary["steps"] == 5 and summary["skipped_steps"] == 1
    assert same(states[3], states[2])  # step 3: no weight and no optimizer moment moved
    assert not same(states[4], states[3]) and not same(states[2], states[1])  # others train
    assert all(torch.isfinite(v).all() for v in states[5].values())
    assert math.isfinite(summary["val_loss_final"])


def test_k_nan_steps_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    poison(monkeypatch, set(range(3, 100)))
    states = record_steps(monkeypatch)
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=10, val_every_n_steps=2)
    cfg.optim.max_bad_steps = 2
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg.to_dict()))

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(job)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    assert err.strip().splitlines()[-1] == (
        "condense: error: training stopped: 2 steps in a row (steps 3-4) had a NaN or"
        f" infinite loss (optim.max_bad_steps=2); last good checkpoint: {last}"
    )
    assert "Traceback" not in err
    # Stopped during step 4: the checkpoint of the validation at step 2 is kept as it was.
    assert max(states) == 3
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2
    trainable = {k.removeprefix("condenser."): v for k, v in saved["state_dict"].items()}
    assert same(trainable, {k: v for k, v in states[2].items() if not k.startswith("exp_avg")})
    assert not (Path(cfg.run_dir) / "summary.json").exists()  # the run did not finish


def test_gradients_reach_the_fused_optimizer_clipped_under_bf16(tiny_pair, tmp_path, monkeypatch):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms.append(float(torch.nn.utils.get_total_norm([g for g in grads if g is not None])))

    configure = CondenseModule.configure_optimizers

    def recording(self):
        config = configure(self)
        assert config["optimizer"].defaults["fused"]
        config["optimizer"].register_step_pre_hook(record)
        return config

    monkeypatch.setattr(CondenseModule, "configure_optimizers", recording)
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=3, precision="bf16-mixed")
    cfg.optim.grad_clip = 1e-3  # far below the tiny pair's gradient norms
    train(cfg)
    assert len(norms) == 3 and max(norms) == pytest.approx(1e-3, rel=0.01)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_encoder_trains_in_train_mode_with_or_without_checkpointing(
    tiny_pair, tmp_path, monkeypatch, checkpointing
):
    # The tiny GPT-2 has dropout: as the encoder, its dropout must run while it trains,
    # whatever gradient checkpointing says (it used to run only with checkpointing on).
    modes: list[bool] = []
    step = CondenseModule.training_step

    def record(self, batch, batch_idx):
        dropouts = [m for m in self.condenser.encoder.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts
        modes.append(all(m.training for m in dropouts))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CondenseModule, "training_step", record)
    gpt2, llama = tiny_pair[1], tiny_pair[0]
    cfg = tiny_config(gpt2, llama, tmp_path / "run", max_steps=3, val_every_n_steps=2)
    cfg.model.gradient_checkpointing = checkpointing
    train(cfg)
    assert modes == [True] * 3  # after a validation too


def test_batches_of_one_passage_are_scored_behind_another_batch(tiny_pair, tmp_path):
    """At validation's batch of 2, both samples are often one passage's: they stand behind
    the previous batch's contexts, or the next one's, so val_loss_wrong scores every target
    val_loss does, not a subset."""
    cfg = tiny_config(*tiny_pair, tmp_path / "run")
    module, _ = build(cfg, "32-true")
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    samples = tokenize(synthetic_samples(3), enc_tok, dec_tok, cfg.dataset)
    collate = Collator(enc_tok.pad_token_id, dec_tok.pad_token_id)
    # Three passages of three samples each; each batch holds one passage only.
    batches = [collate(samples[i : i + 3]) for i in (0, 3, 6)]
    assert all(len(set(b["group"].tolist())) == 1 for b in batches)

    def validate(batches) -> torch.Tensor:
        module.on_validation_epoch_start()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                module.validation_step(batch, i)
        return module._totals

    totals = validate(batches)
    assert totals[1, 1] == totals[0, 1] > 0  # every target scored behind a wrong context too
    assert totals[1, 0] != totals[0, 0]
    # The first batch, with none before it, waits for the next one's contexts.
    two = validate(batches[:2])
    assert two[1, 1] == two[0, 1] < totals[0, 1]
    assert validate(batches[:1])[1, 1] == 0  # one passage in all: nothing to stand behind
