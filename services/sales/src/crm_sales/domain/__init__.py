"""The sales domains: leads and pools, forms and rules, pipelines and opportunities, CPQ, contracts, tasks."""
