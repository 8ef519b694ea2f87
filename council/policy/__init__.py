"""Step 1 of the data path — the policy: what the user asked for, checked.

`schema` (the pydantic models, which are the documentation), `extractors` (the `vote.extract` mini-language),
`loading` (YAML with line numbers, every problem as `file:line: path: message`), `checks` (what only this
machine can tell: model files, MTP heads, vocabularies, spec types — facts passed in from the layers above).
"""
