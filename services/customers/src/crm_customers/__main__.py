from crm_kit.service import run

from crm_customers.app import SPEC

run(SPEC)
