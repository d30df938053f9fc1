from crm_kit.service import run

from crm_sales.app import SPEC

run(SPEC)
