"""The SageMaker hosting API: models, endpoint configs and endpoints as desired state in a store (api, models,
endpoints, resources, calls, store), made real by the reconciler (reconciler, rollout, capacity, specs)."""
