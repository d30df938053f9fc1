from crm_kit.migrations import run_env
from crm_identity.models import Base

run_env(Base.metadata)
