"""The tokenizer travels with the checkpoint and the export (issue 12): trained with a relative
``data.tokenizer=tok.json``, generate and trace work from another directory after tok.json is gone; a
tampered copy is one message naming it."""

import pickle

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from locmoe.checkpoint.directory import step_dir
from tests.checkpoint.tiny import TEXT, locmoe, one_error_line, rewrite, tiny_train


def bpe(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [TEXT], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    tok.save(str(path))


def test_generate_and_trace_use_the_run_s_own_tokenizer(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bpe(work / "tok.json")
    run = work / "run"
    tiny_train(run, "data.tokenizer=tok.json", "model.vocab_size=320", "train.steps=2", "export.at_end=true", cwd=work)
    original = (work / "tok.json").read_bytes()
    assert (step_dir(run, 2) / "tokenizer.json").read_bytes() == original
    assert (run / "router" / "tokenizer.json").read_bytes() == original
    (work / "tok.json").unlink()  # the path it was trained with is gone
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The quick brown\n")
    gen = locmoe("generate", run, run / "router", "--prompts", prompts, "--max-new-tokens", "3")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.startswith("The quick brown") and f"using checkpoint {step_dir(run, 2)}" in gen.stderr
    trace = locmoe("trace", run, tmp_path / "trace.npz", "--tokens", "32")
    assert trace.returncode == 0, trace.stderr[-2000:]
    rewrite(step_dir(run, 2), "tokenizer.json", pickle.dumps(("not", "a", "tokenizer")))
    line = one_error_line(locmoe("generate", step_dir(run, 2), run / "router", "--prompts", prompts))
    assert "tokenizer.json" in line
