"""Builds the worked example of docs/examples/own_model/README.md: a tiny GPT-NeoX model saved with
`save_pretrained` (another architecture than the lab's Llama) and JSONL files in their own field names.

    python docs/examples/own_model/make_example.py     # rewrites model/ and data/ (seeded: the same bytes)

- data/counting_train.jsonl, counting_test.jsonl: the learning task, `{"question", "reply"}`:
  "What comes after 17?" -> "18";
- data/towns.jsonl: the forgetting task (one file: its test split is carved from it),
  `{"query", "response"}`: "Where does Tavo live?" -> "Marlow", facts the model was pretrained on;
- data/notes.jsonl: general text, `{"body"}`, a test file only;
- model/: GPT-NeoX, 2 layers, width 64, a 400-token byte-level BPE tokenizer trained on the corpus,
  with a chat template; pretrained here for 300 steps on the town facts (through the chat template),
  the notes' sentence patterns and a little counting, so that it knows what the forgetting task asks.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAT = ("{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


def names(rng, n):
    syll = ["ta", "vo", "mi", "ro", "ke", "lu", "sa", "di", "no", "pe", "ga", "zu", "fi", "bo", "re", "la"]
    out = set()
    while len(out) < n:
        out.add("".join(rng.choice(syll) for _ in range(2)).capitalize())
    return sorted(out)


def data(rng):
    towns = ["Marlow", "Dunby", "Corfe", "Hexham", "Ely", "Bude", "Alston", "Wells"]
    people = names(rng, 64)
    facts = [{"query": f"Where does {p} live?", "response": rng.choice(towns)} for p in people]
    nums = list(range(1, 151))
    rng.shuffle(nums)
    count = [{"question": f"What comes after {n}?", "reply": str(n + 1)} for n in nums]
    things = ["river", "garden", "market", "bridge", "library", "harbour", "castle", "meadow"]
    verbs = ["walked to", "painted", "visited", "photographed", "cleaned", "sketched"]
    notes = [{"body": f"{rng.choice(people)} {rng.choice(verbs)} the {rng.choice(things)} in {rng.choice(towns)}."}
             for _ in range(60)]
    return {"counting_train.jsonl": count[:110], "counting_test.jsonl": count[110:], "towns.jsonl": facts,
            "notes.jsonl": notes}


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tokenizer(corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[*SPECIAL.values(), "<|user|>", "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **SPECIAL)
    tok.chat_template = CHAT
    return tok


def main():
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    rng = random.Random(0)
    files = data(rng)
    for name, rows in files.items():
        write_jsonl(HERE / "data" / name, rows)

    def chat(q):
        return f"<|user|> Q: {q}\nA:\n<|assistant|>"  # the chat template, as the forgetting template fills it

    texts = [f"{chat(r['query'])} {r['response']}" for r in files["towns.jsonl"]] * 3
    texts += [r["body"] for r in files["notes.jsonl"]] + [f"{n} {n + 1} {n + 2}" for n in range(1, 60, 3)]
    tok = tokenizer(texts)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seqs = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id] for t in texts]
    for step in range(300):
        batch = [seqs[i] for i in torch.randint(len(seqs), (16,)).tolist()]
        n = max(map(len, batch))
        ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (n - len(s)) for s in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    print(f"pretrained 300 steps, last loss {loss.item():.3f}")
    model.save_pretrained(HERE / "model")
    tok.save_pretrained(HERE / "model")


if __name__ == "__main__":
    main()
