pytest_plugins = ["crm_kit.testing"]
