"""moe-eplb inside the engines people serve MoE with, one module per engine.

Each module imports without its engine installed and speaks the engine's own
interface (signatures, tensor formats, error types), so that swapping the
engine's default planner for moe-eplb's is one line:

    moe_eplb.engines.vllm         MoeEplbPolicy (vLLM's AbstractEplbPolicy),
                                  install(), map_to_physical_and_record()
                                  (vLLM's replica rule on CPU and CUDA),
                                  from_vllm() / to_vllm()
    moe_eplb.engines.sglang       rebalance_experts() (SGLang's
                                  eplb_algorithms), install(), the stat dump
                                  and --init-expert-location files
    moe_eplb.engines.deepseek     rebalance_experts() (DeepSeek's eplb)
    moe_eplb.engines.trtllm       MoeLoadBalancerConfig as a dict or YAML;
                                  the per-iteration statistic dumps
    moe_eplb.engines.vllm_ascend  MoeEplbPolicy (vllm-ascend's EplbPolicy),
                                  the expert-map JSON

Every value is computed by the C++ planner and converters
(torch.ops.moe_eplb); each module plans for its engine's replica rule
(moe_eplb.RULES). The facts each module relies on are cited, file and
commit, in docs/SPEC.md ("Replica rules") and the README ("Engines").
"""

__all__ = ["deepseek", "sglang", "trtllm", "vllm", "vllm_ascend"]
