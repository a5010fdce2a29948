"""WikiText-2 reader and the `wikitext2_lstm` workload, on tiny files in the real layout."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from datafiles import write_wikitext2

from trainables.api import REQUIRED_METRICS, Schedule, Target, TrialConfig
from trainables.datasets import wikitext
from trainables.registry import get_workload, run_trial
from trainables.workloads.language import StreamBatches

TINY = {"size": "small", "emsize": 16, "nhid": 16, "bptt": 8, "eval_tokens": 120, "eval_streams": 3}


def _config(root: Path, **kw) -> TrialConfig:
    base = dict(
        workload="wikitext2_lstm",
        batch_size=4,
        lr=20.0,
        max_steps=6,
        eval_every=3,
        target=Target("eval_perplexity", 1.0, "min"),
        data_root=str(root),
        device="cpu",
        options=dict(TINY),
    )
    base.update(kw)
    return TrialConfig(**base)


def test_tokenize_vocab_and_eos_match_the_word_language_model_example(tmp_path):
    d = tmp_path / "wikitext-2"
    d.mkdir()
    (d / "wiki.train.tokens").write_text(" \n = A b = \n b c a \n", encoding="utf-8")
    (d / "wiki.valid.tokens").write_text(" c a \n", encoding="utf-8")
    (d / "wiki.test.tokens").write_text(" b \n\n", encoding="utf-8")
    corpus = wikitext.load_corpus(str(tmp_path))
    # every line, blank ones too, ends in <eos>; ids in order of first appearance; <unk> appended
    assert corpus.vocab == ("<eos>", "=", "A", "b", "c", "a", "<unk>")
    assert corpus.train.tolist() == [0, 1, 2, 3, 1, 0, 3, 4, 5, 0]
    assert corpus.valid.tolist() == [4, 5, 0]
    assert corpus.test.tolist() == [3, 0, 0]


def test_raw_variant_maps_unseen_words_to_unk(tmp_path):
    write_wikitext2(tmp_path, variant="wikitext-2-raw")
    corpus = wikitext.load_corpus(str(tmp_path), "wikitext-2-raw")
    unk = corpus.vocab.index("<unk>")
    assert "zyzzyva" not in corpus.vocab
    assert (corpus.valid == unk).any()


def test_closed_vocabulary_of_the_tokenised_files(tmp_path):
    write_wikitext2(tmp_path)
    corpus = wikitext.load_corpus(str(tmp_path))
    words = wikitext.tokenize(tmp_path / "wikitext-2" / "wiki.valid.tokens")
    assert [corpus.vocab[i] for i in corpus.valid.tolist()] == words  # nothing lost to <unk>


def test_batchify_makes_contiguous_streams_and_drops_the_tail():
    tokens = torch.arange(23)
    data = wikitext.batchify(tokens, 4)
    assert data.shape == (4, 5)
    assert data[1].tolist() == [5, 6, 7, 8, 9]  # stream i = tokens [i*L, (i+1)*L)
    assert data.flatten().tolist() == list(range(20))


def test_stream_batches_are_next_token_windows_of_exact_size_and_resume():
    batches = StreamBatches(torch.arange(4 * 11), batch_size=4, bptt=3)  # streams of 11 tokens
    assert batches.steps_per_epoch == 3  # (11 - 1) // 3 whole windows; the last token only a target
    seen = [next(batches) for _ in range(4)]
    for x, y, _ in seen:
        assert x.shape == y.shape == (4, 3)
        assert torch.equal(y, x + 1)  # targets are the next tokens of the same stream
    assert [r for _, _, r in seen] == [True, False, False, True]  # epoch wraps, hidden state reset
    assert seen[1][0][2].tolist() == [25, 26, 27]  # stream 2 starts at token 22, window 1 at +3
    restored = StreamBatches(torch.arange(4 * 11), batch_size=4, bptt=3)
    restored.load_state_dict(batches.state_dict())
    assert torch.equal(next(restored)[0], next(batches)[0])


def test_missing_files_name_the_path_the_root_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("CRITBATCH_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        run_trial(_config(tmp_path), lambda m, c=None: None)
    msg = str(e.value)
    assert str(tmp_path / "wikitext-2" / "wiki.train.tokens") in msg
    assert "CRITBATCH_DATA" in msg and "critbatch data download wikitext2" in msg
    assert "wikitext-2-v1.zip" in msg


def test_data_root_falls_back_to_the_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CRITBATCH_DATA", str(tmp_path / "env"))
    assert wikitext.data_root("") == tmp_path / "env"
    assert wikitext.data_root(str(tmp_path / "given")) == tmp_path / "given"
    monkeypatch.delenv("CRITBATCH_DATA")
    assert wikitext.data_root("") == Path.home() / ".critbatch" / "data"


def test_cpu_smoke_run_reports_every_metric(tmp_path):
    write_wikitext2(tmp_path)
    reports: list[dict] = []
    cfg = _config(tmp_path, lr=5.0, max_steps=12, eval_every=6)
    run_trial(cfg, lambda m, c=None: reports.append(m))
    assert [r["step"] for r in reports] == [6, 12]
    for r in reports:
        assert set(REQUIRED_METRICS) <= set(r)
        assert r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]))
        assert r["examples"] == r["step"] * 4
    last = reports[-1]
    assert last["status"] == "not_reached"
    vocab = wikitext.load_corpus(str(tmp_path)).vocab_size
    assert last["eval_loss"] < math.log(vocab) - 0.05  # better than a uniform guess after 12 steps
    # 1106 tokens / 4 streams = 276 per stream, (276 - 1) // 8 = 34 windows per epoch
    assert last["epoch"] == pytest.approx(12 / 34)


def test_data_fraction_uses_the_first_tokens_and_warmup_follows_the_schedule(tmp_path):
    write_wikitext2(tmp_path)
    reports: list[dict] = []
    sched = Schedule("lsr", base_batch_size=2, base_lr=1.0, warmup_epochs=1.0)
    cfg = _config(tmp_path, data_fraction=0.5, schedule=sched, max_steps=4, eval_every=2)
    run_trial(cfg, lambda m, c=None: reports.append(m))
    # half of 1106 tokens = 553, 138 per stream, 17 windows per epoch: warm-up over 17 steps
    assert reports[-1]["epoch"] == pytest.approx(4 / 17)
    assert reports[-1]["lr"] == pytest.approx(20.0 * 4 / 17)  # step 3 of the warm-up


def test_gradient_clipping_bounds_the_first_update(tmp_path):
    # One SGD step moves the parameters by lr * |g| unclipped, by lr * clip when |g| > clip.
    write_wikitext2(tmp_path)
    from trainables.loop import seed_everything
    from trainables.workloads import language

    def first_step_size(clip: float) -> float:
        cfg = _config(
            tmp_path,
            options={**TINY, "clip": clip},
            lr=1.0,
            max_steps=2,
            eval_every=1,
            checkpoint_every=1,
        )
        seed_everything(cfg.seed)
        start = language.build(cfg, torch.device("cpu")).model.state_dict()
        saved: list[dict] = []
        run_trial(cfg, lambda m, c=None: saved.append(copy.deepcopy(c)) if c else None)
        after = saved[0]["model"]
        return math.sqrt(
            sum(float(((after[k] - start[k]) ** 2).sum()) for k in start if k != "_extra_state")
        )

    assert first_step_size(0.01) == pytest.approx(0.01, rel=1e-3)
    assert first_step_size(0.0) > 0.05  # the raw gradient is far larger than the clip


def test_resume_from_a_checkpoint_continues_the_same_trajectory(tmp_path):
    write_wikitext2(tmp_path)
    cfg = _config(tmp_path, max_steps=6, eval_every=2, checkpoint_every=1)
    full: list[dict] = []
    run_trial(cfg, lambda m, c=None: full.append(m))
    saved: list[dict] = []
    first: list[dict] = []

    def stop_after_first(m, c=None):
        first.append(m)
        if c is not None:
            saved.append(c)
            raise KeyboardInterrupt  # a lost worker

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, stop_after_first)
    assert saved[0]["model"]["_extra_state"]["hidden"] is not None  # carried LSTM state is saved
    resumed: list[dict] = []
    run_trial(cfg, lambda m, c=None: resumed.append(m), saved[0])
    assert [r["step"] for r in resumed] == [4, 6]
    for a, b in zip(full[1:], resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)


def test_a_misspelt_option_fails(tmp_path):
    write_wikitext2(tmp_path)
    with pytest.raises(ValueError, match="options.bptt_len: unknown option .*did you mean `bptt`"):
        run_trial(_config(tmp_path, options={**TINY, "bptt_len": 10}), lambda m, c=None: None)


def test_download_unpacks_the_standard_archive_and_tries_the_next_address(tmp_path, monkeypatch):
    # file:// addresses go through the same urllib code as https (no network in tests)
    import zipfile

    src = write_wikitext2(tmp_path / "src")
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.iterdir()):
            z.write(f, f"wikitext-2/{f.name}")
    urls = (f"file://{tmp_path}/missing.zip", f"file://{archive}")
    monkeypatch.setitem(wikitext.URLS, "wikitext-2", urls)
    folder = wikitext.download(tmp_path / "root")
    assert folder == tmp_path / "root" / "wikitext-2"
    assert torch.equal(
        wikitext.load_corpus(str(tmp_path / "root")).train,
        wikitext.load_corpus(str(tmp_path / "src")).train,
    )
    monkeypatch.setitem(wikitext.URLS, "wikitext-2", urls[:1])
    with pytest.raises(RuntimeError, match="missing.zip"):
        wikitext.download(tmp_path / "other")


def test_registry_entry():
    w = get_workload("wikitext2_lstm")
    assert w.metrics == {"eval_loss": "min", "eval_perplexity": "min"}
    assert w.train_size == 2_088_628 // 35
    assert w.dataset == "wikitext2"
    assert w.build is not None and w.train is None  # the shared loop, with the task's clip
    assert "hidden state" in w.whole_batches


@pytest.mark.parametrize("over", [{"noise_scale": True}, {"micro_batch_size": 2}])
def test_the_loop_refuses_to_split_token_streams(tmp_path, over):
    # `critbatch check` refuses these job fields first; a TrialConfig built by hand must not
    # slip through and reset the carried hidden state on every part.
    write_wikitext2(tmp_path)
    with pytest.raises(ValueError, match="hidden state carries across steps"):
        run_trial(_config(tmp_path, **over), lambda m, c=None: None)
