"""Build the small BPE tokenizer that the tiny random test models use (no hub download needed).

    python tools/make_tiny_tokenizer.py [--data ../shared/data] [--vocab 2048]

Trained on the texts of the bundled public data (SciFact, STS-B, Banking77); the result is
committed under sfr_ds/resources/tiny_tokenizer/. It adds <s> at the start, never </s>: sfr-ds
appends EOS itself, as it must for real decoder tokenizers.
"""

import argparse
import csv
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]


def texts(data: Path):
    with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == 2000:
                break
            d = json.loads(line)
            yield d["title"] + " " + d["text"]
    with open(data / "stsbenchmark" / "sts-train.csv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            yield from row[5:7]
    with open(data / "banking77" / "train.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield row["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--out", default=str(ROOT / "sfr_ds" / "resources" / "tiny_tokenizer"))
    args = ap.parse_args()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts(Path(args.data)), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(args.out)
    print(f"wrote {args.out} (vocab {fast.vocab_size})")


if __name__ == "__main__":
    main()
