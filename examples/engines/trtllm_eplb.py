"""A TensorRT-LLM MoeLoadBalancerConfig from its per-rank statistic dumps.

TensorRT-LLM writes EXPERT_STATISTIC_PATH/meta_info.json and
rank<r>.safetensors ("<iteration>_<layer>" -> expert counts of that rank);
this example writes a small dump of that form, plans from it for TensorRT-LLM's
rule and writes the YAML that moe_config.load_balancer takes. Runs without
TensorRT-LLM:

    python3 examples/engines/trtllm_eplb.py [OUT_DIR]
"""
import json
import os
import struct
import sys
import tempfile

import torch

from moe_eplb.engines import trtllm as eplb_trtllm


def write_safetensors(path, tensors):
    header, body = {}, b""
    for name, tensor in tensors.items():
        data = tensor.numpy().tobytes()
        header[name] = {"dtype": "I32", "shape": list(tensor.shape),
                        "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode()
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text + body)


out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
torch.manual_seed(2)
ep_size, num_experts, layers = 8, 32, (3, 4, 5)
with open(os.path.join(out, "meta_info.json"), "w") as stream:
    json.dump({"num_experts": num_experts, "num_experts_per_token": 8}, stream)
popularity = torch.rand(len(layers), num_experts) ** 3
for rank in range(ep_size):
    write_safetensors(os.path.join(out, "rank%d.safetensors" % rank), {
        "%d_%d" % (iteration, layer): torch.multinomial(popularity[j], 4096, replacement=True)
        .bincount(minlength=num_experts).to(torch.int32)
        for iteration in range(100, 104) for j, layer in enumerate(layers)})

statistic = eplb_trtllm.read_expert_statistic(out)
print(statistic)
config = eplb_trtllm.plan_config(statistic, ep_size=ep_size, num_slots=48)
eplb_trtllm.write_config_yaml(os.path.join(out, "moe_load_balancer.yaml"), config)
print("wrote %s: %d slots, layers %s" % (os.path.join(out, "moe_load_balancer.yaml"),
                                         config["num_slots"],
                                         sorted(config["initial_global_assignments"])))
