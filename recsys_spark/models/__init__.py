"""The models: ALS, item-item cosine, EASE and RP3beta, and the confidence transforms they share."""
