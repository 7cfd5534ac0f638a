"""End-to-end training on the tiny backbone: loss, parameters, metrics, modes, export."""

from __future__ import annotations

import json

import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import BudgetError, InputError
from metaembed.model import MetaEmbedModel
from metaembed.training.collator import ContrastiveCollator
from metaembed.training.config import TrainingConfig
from metaembed.training.examples import load_pairs
from metaembed.training.losses import InfoNCELoss, MMRLoss
from metaembed.training.run import build_trainer, groups_for_mode, train

GROUPS = [(1, 1), (2, 4), (4, 8)]


def _mmr_loss_on_all(model, pairs_file) -> float:
    """The MMR loss of all 12 examples as one batch, without dropout (an independent evaluation)."""
    source = load_pairs(pairs_file)
    batch = ContrastiveCollator(model, num_negatives=1)([source[i] for i in range(len(source))])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        query = model(batch["query"][0], "query")
        positives = model(batch["positive"][0], "candidate")
        negatives = model(batch["negative"][0], "candidate").unsqueeze(1)
    model.train(was_training)
    return MMRLoss(InfoNCELoss(), GROUPS)(query, positives, negatives).loss.item()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, images):
    """One 6-step MMR run shared by the tests below (training is the slow part)."""
    from tests.training.conftest import small_settings, write_pairs
    from metaembed.model.testing import tiny_model

    folder = tmp_path_factory.mktemp("trained")
    names = []
    for k, image in enumerate(images):
        image.save(folder / f"img{k}.png")
        names.append(f"img{k}.png")
    pairs = write_pairs(folder / "pairs.jsonl", 12, with_images=True, image_names=names)
    model = tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = _mmr_loss_on_all(model, pairs)
    config = TrainingConfig.from_dict(
        small_settings(folder / "run", pairs, max_steps=6, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    )
    path = train(config, model=model)
    return dict(model=model, before=before, loss_before=loss_before, pairs=pairs, path=path, config=config)


def test_loss_goes_down(trained_run):
    after = _mmr_loss_on_all(trained_run["model"], trained_run["pairs"])
    assert after < trained_run["loss_before"] - 0.05, (trained_run["loss_before"], after)


def test_only_lora_and_meta_tokens_change(trained_run):
    model, before = trained_run["model"], trained_run["before"]
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    # peft initialises lora_B at zero: a non-zero lora_B proves gradients reached the adapters
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    assert not torch.equal(model.meta_tokens.weight, before["meta_tokens.embedding.weight"])
    unchanged = 0
    for name, parameter in model.named_parameters():
        if "lora_" in name or name.startswith("meta_tokens"):
            continue
        assert not parameter.requires_grad, name
        assert torch.equal(parameter, before[name.replace(".base_layer.", ".")]), name
        unchanged += 1
    assert unchanged > 20


def test_run_folder_has_config_and_per_budget_metrics(trained_run):
    run = trained_run["path"].parent
    assert TrainingConfig.from_yaml(run / "config.yaml") == trained_run["config"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/1,1" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for record in steps:
        for budget in ("1,1", "2,4", "4,8"):
            assert 0.0 <= record[f"accuracy/{budget}"] <= 1.0
            assert record[f"loss/{budget}"] > 0
        # the logged total is the mean of the per-budget losses (combination "mean")
        mean = sum(record[f"loss/{b}"] for b in ("1,1", "2,4", "4,8")) / 3
        assert record["loss"] == pytest.approx(mean, rel=1e-4)


def test_saved_model_loads_and_encodes_like_the_trained_one(trained_run):
    loaded = MetaEmbedModel.from_pretrained(trained_run["path"])
    texts = ["tell me about plum", "a red truck"]
    expected = trained_run["model"].encode_queries(texts)
    got = loaded.encode_queries(texts)
    assert got.shape == (2, 4, trained_run["model"].embedding_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.encode_candidates(texts), trained_run["model"].encode_candidates(texts))


def _one_step_gradients(make_config, model, mode: str, groups=GROUPS):
    trainer = build_trainer(make_config(mode=mode, groups=[list(g) for g in groups] if groups else None), model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    output = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
    output.loss.backward()
    return output, trainer.model.model


def test_modes_train_the_vectors_they_should(make_config, fresh_model):
    mmr, mmr_model = _one_step_gradients(make_config, fresh_model(), "mmr")
    nommr, nommr_model = _one_step_gradients(make_config, fresh_model(), "nommr", groups=None)
    single, single_model = _one_step_gradients(make_config, fresh_model(), "single_vector", groups=None)
    assert list(mmr.budget_losses) == [Budget(*g) for g in GROUPS]
    assert list(nommr.budget_losses) == [Budget(4, 8)]
    assert list(single.budget_losses) == [Budget(1, 1)]
    # same weights, same batch: NoMMR is MMR's largest group alone, single-vector its smallest
    assert nommr.loss.item() == pytest.approx(mmr.budget_losses[Budget(4, 8)].item(), rel=1e-5)
    assert single.loss.item() == pytest.approx(mmr.budget_losses[Budget(1, 1)].item(), rel=1e-5)
    assert mmr.loss.item() == pytest.approx(sum(v.item() for v in mmr.budget_losses.values()) / 3, rel=1e-5)
    # table rows: 4 query Meta Tokens, then 8 candidate ones. Causal attention: a candidate Meta
    # Token only influences later ones, so a (1,1) loss leaves candidate rows 2..8 untouched.
    single_grad = single_model.meta_tokens.embedding.weight.grad.abs().sum(dim=1)
    assert single_grad[4] > 0 and torch.all(single_grad[5:] == 0)
    for trained in (mmr_model, nommr_model):
        # (a candidate vector that wins no MaxSim max gets no gradient, so test the rows together)
        assert trained.meta_tokens.embedding.weight.grad[5:].abs().sum() > 0


def test_single_vector_and_naive_multi_vector_poolings(make_config, fresh_model):
    last, _ = _one_step_gradients(make_config, fresh_model(pooling="last_token"), "single_vector", groups=None)
    assert list(last.budget_losses) == [Budget(1, 1)]
    chunks, _ = _one_step_gradients(make_config, fresh_model(pooling="chunks"), "naive_multi_vector", groups=None)
    assert list(chunks.budget_losses) == [Budget(4, 8)]


def test_modes_reject_models_they_do_not_fit(fresh_model):
    with pytest.raises(InputError, match="pooling"):
        groups_for_mode("mmr", None, fresh_model(pooling="last_token"))
    with pytest.raises(InputError, match="chunks"):
        groups_for_mode("naive_multi_vector", None, fresh_model())
    with pytest.raises(BudgetError, match="16,64"):
        groups_for_mode("mmr", None, fresh_model())  # paper groups need 16/64 vectors


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown settings"):
        TrainingConfig.from_dict({"learning_rte": 1e-4})
    with pytest.raises(InputError, match="mode"):
        TrainingConfig(mode="matryoshka")
    with pytest.raises(InputError, match="no `data`"):
        build_trainer(TrainingConfig(output_dir=str(tmp_path)), model=object())


def test_without_lora_only_meta_tokens_train(make_config, fresh_model):
    trainer = build_trainer(make_config(lora=None), fresh_model())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable == ["model.meta_tokens.embedding.weight"]
    with pytest.raises(InputError, match="nothing to train"):
        build_trainer(make_config(lora=None, mode="single_vector"), fresh_model(pooling="last_token"))


def test_trainable_modules_train_fully_beside_lora(make_config, fresh_model):
    model = fresh_model()
    # a module of the tiny backbone that LoRA does not touch: its whole weight must train
    full = next(n for n, _ in model.backbone.named_parameters() if "norm" in n)
    pattern = full.rsplit(".", 1)[0].replace(".", r"\.") + r"\."
    trainer = build_trainer(make_config(trainable_modules=pattern), model)
    trainable = {n.removeprefix("model.") for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert f"backbone.{full}" in trainable
    assert any("lora_" in n for n in trainable)  # LoRA still trains alongside
    frozen_norms = [n for n, p in model.backbone.named_parameters()
                    if "norm" in n and n != full and not n.startswith(full.rsplit(".", 1)[0])]
    assert frozen_norms and not any(dict(model.backbone.named_parameters())[n].requires_grad for n in frozen_norms)


def test_trainable_modules_errors_are_clear(make_config, fresh_model):
    with pytest.raises(InputError, match="not a regular expression"):
        TrainingConfig(trainable_modules="(unclosed")
    with pytest.raises(InputError, match="matches no backbone parameter"):
        build_trainer(make_config(lora=None, trainable_modules=r"^no_such_module\."), fresh_model())
