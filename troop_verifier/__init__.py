"""The verifier: checks that nodes serve the model they claim (docs/adr/0052).

`troop verifier` sends ordinary-looking jobs to nodes, recomputes the
log-probability of every token a node sent on a trusted copy of the model
(`scoring`), judges the differences against measured thresholds (`judging`)
and reports a signed verdict to the coordinator (`runner`, `verdicts`).
"""
