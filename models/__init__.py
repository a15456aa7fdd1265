"""Policy and value networks that both rollout actors and learners run.

Dependency rule: imports only torch (no Ray, no other accord package), so `actors/` and
`learner/` can both import it without importing each other.
"""
