from crm_kit.service import run

from crm_identity.app import SPEC

run(SPEC)
