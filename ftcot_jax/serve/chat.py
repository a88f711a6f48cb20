"""The chat template: OpenAI messages -> the prompt text the decoder sees."""

from __future__ import annotations

from ftcot_jax.serve.errors import APIError

PLAIN_ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's chat template when it has one, else the plain template of docs/serve.md:
    "System: ...\\n\\nUser: ...\\n\\nAssistant:" (a name, if given, goes in parentheses after the role)."""
    if getattr(tokenizer, "chat_template", None):
        # 'developer' is OpenAI's newer name for 'system'; HF templates only know 'system'.
        msgs = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # templates raise (e.g. "roles must alternate") on conversations they refuse
            raise APIError(
                400, f"Invalid 'messages': the model's chat template refused them: {e}", param="messages"
            ) from None
    parts = []
    for m in messages:
        role = PLAIN_ROLE_NAMES[m["role"]]
        if m.get("name"):
            role = f"{role} ({m['name']})"
        parts.append(f"{role}: {m['content']}")
    parts.append("Assistant:")
    return "\n\n".join(parts)
