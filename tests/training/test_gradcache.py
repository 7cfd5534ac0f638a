"""Memory options change memory, not gradients: gradient caching and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from metaembed.training.run import build_trainer


def _step_gradients(make_config, fresh_model, chunk_size, dropout=0.0, seed=7, **overrides):
    config = make_config(
        per_device_batch_size=6,
        gradient_cache_chunk_size=chunk_size,
        learnable_temperature=True,
        lora={"r": 4, "alpha": 8, "dropout": dropout},
        **overrides,
    )
    trainer = build_trainer(config, fresh_model())
    # 2 accumulation steps: the trainer divides the loss by 2 before backward; caching must follow
    trainer.current_gradient_accumulation_steps = 2
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    torch.manual_seed(seed)
    loss = trainer.training_step(trainer.model, batch)
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss, gradients, batch


def _assert_same_gradients(expected, got):
    assert set(expected) == set(got) and len(expected) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_cache_matches_the_plain_step(make_config, fresh_model):
    plain_loss, plain, plain_batch = _step_gradients(make_config, fresh_model, None)
    cached_loss, cached, cached_batch = _step_gradients(make_config, fresh_model, 2)
    assert len(plain_batch["query"]) == 1 and len(cached_batch["query"]) == 3  # really chunked
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert "loss.loss.log_temperature" in cached  # the learnable temperature's gradient is cached too
    _assert_same_gradients(plain, cached)


def test_gradient_cache_replays_dropout(make_config, fresh_model):
    # With LoRA dropout on, the re-encoding must draw the same masks as the no-grad pass; with one
    # chunk per side both steps consume the RNG identically, so their gradients must agree.
    _, plain, _ = _step_gradients(make_config, fresh_model, None, dropout=0.3)
    _, cached, _ = _step_gradients(make_config, fresh_model, 6, dropout=0.3)
    _assert_same_gradients(plain, cached)
    _, other_seed, _ = _step_gradients(make_config, fresh_model, 6, dropout=0.3, seed=8)
    assert any(not torch.allclose(plain[n], other_seed[n]) for n in plain)  # dropout is really on


def test_gradient_checkpointing_gives_the_same_gradients(make_config, fresh_model):
    _, plain, _ = _step_gradients(make_config, fresh_model, None)
    model = fresh_model()
    config = make_config(per_device_batch_size=6, gradient_checkpointing=True, learnable_temperature=True)
    trainer = build_trainer(config, model)
    assert model.backbone.is_activation_checkpointing
    trainer.current_gradient_accumulation_steps = 2
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    trainer.training_step(trainer.model, batch)
    _assert_same_gradients(plain, {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad})


def test_precision_reaches_the_trainer(make_config, fresh_model):
    trainer = build_trainer(make_config(precision="bf16"), fresh_model())
    assert trainer.args.bf16 and not trainer.args.fp16
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.training_step(trainer.model, batch)  # bf16 autocast forward, fp32 loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.requires_grad)


def test_gradient_accumulation_keeps_each_micro_batch_a_contrastive_batch(make_config, fresh_model):
    """Accumulating 2 micro-batches of 2 = the mean of two 2-example contrastive losses (own negatives each)."""
    trainer = build_trainer(make_config(per_device_batch_size=2, gradient_accumulation_steps=2), fresh_model())
    examples = [trainer.train_dataset[i] for i in range(4)]
    trainer.current_gradient_accumulation_steps = 2
    for part in (examples[:2], examples[2:]):
        trainer.training_step(trainer.model, trainer.data_collator(part))
    got = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}

    reference = build_trainer(make_config(per_device_batch_size=2), fresh_model()).model
    total = 0.0
    for part in (examples[:2], examples[2:]):
        batch = trainer.data_collator(part)
        query = reference.model(batch["query"][0], "query")
        positives = reference.model(batch["positive"][0], "candidate")
        negatives = reference.model(batch["negative"][0], "candidate").unsqueeze(1)
        total = total + reference.loss(query, positives, negatives).loss / 2
    total.backward()
    _assert_same_gradients({n: p.grad for n, p in reference.named_parameters() if p.requires_grad}, got)
