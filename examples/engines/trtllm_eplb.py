"""A TensorRT-LLM MoeLoadBalancerConfig from its per-rank statistic dumps.

TensorRT-LLM writes EXPERT_STATISTIC_PATH/meta_info.json and
rank<r>.safetensors ("<iteration>_<layer>" -> expert counts of that rank);
this example writes a small dump of that form (write_expert_statistic), plans
from it for TensorRT-LLM's rule and writes the YAML that moe_config.load_balancer
takes. Runs without TensorRT-LLM:

    python3 examples/engines/trtllm_eplb.py [OUT_DIR]
"""
import os
import sys
import tempfile

import torch

import moe_eplb.engines.trtllm as eplb_trtllm

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
torch.manual_seed(2)
ep_size, num_experts, layers, iterations = 8, 32, [3, 4, 5], 4
popularity = torch.rand(len(layers), num_experts) ** 3
counts = torch.stack([torch.stack([torch.stack([
    torch.multinomial(popularity[j], 4096, replacement=True).bincount(minlength=num_experts)
    for _ in range(ep_size)]) for j in range(len(layers))]) for _ in range(iterations)])
eplb_trtllm.write_expert_statistic(out, eplb_trtllm.ExpertStatistic(
    counts.double(), layers, 100, {"num_experts": num_experts, "num_experts_per_token": 8}))

statistic = eplb_trtllm.read_expert_statistic(out)
print(statistic)
config = eplb_trtllm.plan_config(statistic, ep_size=ep_size, num_slots=48)
yaml_path = os.path.join(out, "moe_load_balancer.yaml")
eplb_trtllm.write_config_yaml(yaml_path, config)
print("wrote %s: %d slots, layers %s" % (yaml_path, config["num_slots"],
                                         sorted(config["initial_global_assignments"])))
