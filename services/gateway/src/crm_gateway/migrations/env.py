from crm_gateway.models import Base
from crm_kit.migrations import run_env

run_env(Base.metadata)
