"""The assistant application: a real chat model (e.g. SmolLM2-135M-Instruct) asked
everyday questions with known answers, by simulated users who judge free text.

An application of the platform, beside demo/ and independent of it: it reaches
the platform only through ``shared`` (stubs, channels) and the public gRPC API,
and the platform never imports it. Its parts:

- :mod:`assistant.dataset`: the questions (questions.jsonl; ``python -m assistant.dataset`` rebuilds it);
- :mod:`assistant.judge`: correct and clean, per (prompt, response); ``gate_judge`` is the
  trainer's ``--gate-judge assistant.judge:gate_judge``;
- :mod:`assistant.users`, :mod:`assistant.feedback`: the simulated users and what they send;
- :mod:`assistant.simulator`: the users against a running stack (`rlhf simulate --app assistant`);
- :mod:`assistant.tastes`: example ``--preference`` plug-ins.

Plugging it in (a stack serving a chat model, e.g. ``rlhf import policy smollm2 --set-current``)::

    rlhf simulate --app assistant --users 50 --requests 500
    rlhf simulate --app assistant --preference assistant.tastes:terse_utility --prompts train
    # the trainer's gate: --gate-judge assistant.judge:gate_judge
"""
