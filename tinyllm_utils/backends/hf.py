"""The transformers backend: a Hugging Face checkpoint (or the embedded GGUF, de-quantized once), batched with
left padding and the KV cache, under plain greedy decoding.
"""

from __future__ import annotations

import time

from tinyllm_utils.backends.base import END_OF_TURN, Generation, refuse_grammars
from tinyllm_utils.bfcl.decoding import cannot_become_calls
from tinyllm_utils.models.embedded import embedded_hf_copy
from tinyllm_utils.models.registry import ModelSpec, ModelUnavailableError

# Plain greedy decoding, as llama.cpp and the server backends run it: a checkpoint's generation_config may ask
# for more (Qwen: repetition_penalty 1.05); generate()'s own arguments override it.
PLAIN_GREEDY = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
                "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None}


class TransformersBackend:
    name = "transformers"

    def __init__(self, spec: ModelSpec, max_new_tokens: int = 256, seed: int = 0, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec, self.max_new_tokens, self.seed, self.batch_size = spec, max_new_tokens, seed, batch_size
        if spec.source == "embedded":
            self.source = str(embedded_hf_copy(spec))
        else:
            self.source = spec.path or spec.hf_id
        torch.manual_seed(seed)
        try:
            # a hub model is loaded at its pinned commit (registry `revision`), so "the same model" stays the same
            revision = spec.revision if spec.source == "hub" else None
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, revision=revision)
            self.model = AutoModelForCausalLM.from_pretrained(self.source, dtype="auto", revision=revision)
        except OSError as exc:
            raise ModelUnavailableError(
                f"cannot load {spec.name!r} from {self.source!r}: it is not in the local Hugging Face cache and "
                f"the hub is unreachable or the id is wrong ({str(exc).splitlines()[0]}). On a machine with the "
                "hub, run once with network access; offline, pass a local checkpoint folder."
            ) from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        stop_ids = {self.tokenizer.eos_token_id}
        end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
            stop_ids.add(end_of_turn)
        configured = self.model.generation_config.eos_token_id
        stop_ids.update(configured if isinstance(configured, list) else [configured])
        self.stop_ids = sorted(i for i in stop_ids if i is not None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True).input_ids

    def generate(self, prompts: list[str], stop_when_hopeless: bool = False,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        refuse_grammars(self.name, grammars)
        results: list[Generation | None] = [None] * len(prompts)
        # Batch prompts of similar length together so left padding wastes little compute.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, generation in zip(batch, self._generate_batch([prompts[i] for i in batch], stop_when_hopeless)):
                results[i] = generation
        return results

    def _generate_batch(self, prompts: list[str], stop_when_hopeless: bool = False) -> list[Generation]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class StopIfHopeless(StoppingCriteria):
            def __init__(self, prompt_width: int):
                self.prompt_width, self.stopped = prompt_width, None

            def __call__(self, input_ids, scores, **kwargs):
                if self.stopped is None:
                    self.stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for row in range(input_ids.shape[0]):
                    if not self.stopped[row]:
                        text = tokenizer.decode(input_ids[row, self.prompt_width:], skip_special_tokens=True)
                        self.stopped[row] = cannot_become_calls(text)
                return self.stopped.clone()

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        prompt_lengths = encoded.attention_mask.sum(dim=1).tolist()
        if self.max_positions and encoded.input_ids.shape[1] + self.max_new_tokens > self.max_positions:
            if len(prompts) > 1:  # retry one by one so only the too-long prompt is refused
                return [g for p in prompts for g in self._generate_batch([p])]
            return [Generation("", prompt_lengths[0], 0, 0.0, error="inference:prompt_too_long")]
        stopper = StopIfHopeless(encoded.input_ids.shape[1])
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **encoded, max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id, **PLAIN_GREEDY,
                stopping_criteria=StoppingCriteriaList([stopper]) if stop_when_hopeless else None,
            )
        seconds = (time.perf_counter() - start) / len(prompts)
        generations = []
        stopped = stopper.stopped.tolist() if stopper.stopped is not None else [False] * len(prompts)
        for row, prompt_length, early in zip(output[:, encoded.input_ids.shape[1]:].tolist(), prompt_lengths, stopped):
            new_tokens = []
            for token in row:
                if token in self.stop_ids:
                    break
                new_tokens.append(token)
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
            generations.append(Generation(text, prompt_length, len(new_tokens), seconds, stopped_early=bool(early)))
        return generations

    def describe(self) -> dict:
        import torch
        import transformers

        return {"backend": self.name, "transformers": transformers.__version__, "torch": torch.__version__,
                "source": self.source, "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "torch_threads": torch.get_num_threads()}
