"""`mixvae sweep`: hyperparameter search with Optuna, every trial a complete mixvae run nested under one
MLflow parent run; several workers (processes, machines) share one study through Optuna's storages."""
