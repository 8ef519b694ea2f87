"""Step 4 — the vote: ask the members, extract their answers, decide.

`client` (calling a member over HTTP or through litellm), `extract` (reply → normalised answer), `vote`
(majority, weighted, similarity, judge; ties; early stop), `engine` (a council at run time: fan-out, deadline,
early stop, quorum), `ballots` (recent answers), `assembly` (`assemble()`: plan → processes and engines).
"""
