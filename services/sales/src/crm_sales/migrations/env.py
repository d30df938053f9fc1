from crm_kit.migrations import run_env
from crm_sales.models import Base

run_env(Base.metadata)
