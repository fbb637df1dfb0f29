"""`fastx quantize MODEL OUT.gguf --type TYPE`: progress, fallbacks and a summary; bad input exits 2, one line."""

import gguf
import pytest

from fastx.cli import main


def test_quantize_writes_a_gguf_with_progress_fallbacks_and_summary(cli, tmp_path, tiny_bpe_llama):
    out = tmp_path / "tiny-q4_k_m.gguf"
    result = cli.run("quantize", tiny_bpe_llama, out, "--type", "q4_k_m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 20 and progress[0].startswith("[ 1/20] ") and progress[-1].startswith("[20/20] ")
    fallbacks = [line for line in result.stderr.splitlines() if "fallback:" in line]
    # llama.cpp's use_more_bits(layer, 2) picks layer 1 only: its ffn_down is Q6_K, layer 0's Q4_K
    assert fallbacks == [
        "fastx: fallback: blk.0.ffn_down.weight Q4_K -> Q5_0 (row length 320)",
        "fastx: fallback: blk.1.ffn_down.weight Q6_K -> Q8_0 (row length 320)",
    ], result.stderr
    (summary,) = result.stdout.splitlines()
    assert (
        summary.startswith(f"wrote {out} (Q4_K_M): 20 tensors, 2 fell back; source ") and "bits per weight" in summary
    )
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--type", "Q3_K"], ["--type: expected one of F32", "'Q3_K'"]),
        (["--type", "F16", "--model-missing"], ["MODEL: expected a checkpoint folder", "no such folder"]),
        (["--type", "F16", "--out-dir"], ["OUT: expected a .gguf file path", "folder"]),
        (["--type", "F16", "--out-exists"], ["OUT:", "already exists", "--force"]),
        (["--type", "F16", "--bert"], ["expected a Llama checkpoint", "'bert'"]),
        (["--type", "F16", "--wordpiece"], ["tokenizer model 'WordPiece' is not supported", "byte-level BPE"]),
    ],
)
def test_bad_input_exits_2_with_one_line(args, words, tmp_path, tiny_bpe_llama, tiny_llama, minilm, capsys):
    model, out = tiny_bpe_llama, tmp_path / "x.gguf"
    flags = ["--type", args[1]]
    if "--model-missing" in args:
        model = tmp_path / "missing"
    if "--out-dir" in args:
        out = tmp_path
    if "--out-exists" in args:
        out.write_bytes(b"keep")
    if "--bert" in args:
        model = minilm
    if "--wordpiece" in args:
        model = tiny_llama
    assert main(["quantize", str(model), str(out), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastx: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    if "--out-exists" in args:
        assert out.read_bytes() == b"keep"
        assert main(["quantize", str(model), str(out), "--type", "F16", "--force", "-q"]) == 0
        assert gguf.GGUFReader(out).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
