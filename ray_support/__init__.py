"""Ray helpers shared by the Ray wrappers of the actors and of the learner. A floor below both
(it imports only Ray), so neither reaches up into the launcher package `accord` for them."""
