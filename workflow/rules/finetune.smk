# Three rules make a policy's model.pt; each policy goes to exactly one of them (common.smk
# finetune_rule_of), so the DAG names what actually runs.


rule finetune:
    input:
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        fp32=f"{RES}/pretrain/model.pt",
    output:
        model=update(f"{RES}/policies/{{policy}}/model.pt"),
        timing=update(timing_file("finetune")),
    wildcard_constraints:
        policy=policies_made_by("finetune"),
    params:
        **stage_params("finetune", launch=True),
        spec=finetune_spec,
    log:
        f"{RES}/logs/finetune/{{policy}}.log",
    threads: threads_of("finetune")
    resources:
        **resources_of("finetune"),
    shell:
        "$MPQ_RUN_finetune --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --policy {input.policy} --fp32 {input.fp32} --out {output.model} > {log} 2>&1"


rule ptq:
    input:
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        fp32=f"{RES}/pretrain/model.pt",
    output:
        model=update(f"{RES}/policies/{{policy}}/model.pt"),
        timing=update(timing_file("ptq")),
    wildcard_constraints:
        policy=policies_made_by("ptq"),
    params:
        **stage_params("ptq"),
        spec=finetune_spec,
    log:
        f"{RES}/logs/ptq/{{policy}}.log",
    threads: threads_of("ptq")
    resources:
        **resources_of("ptq"),
    shell:
        "$MPQ_RUN_ptq --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --policy {input.policy} --fp32 {input.fp32} --out {output.model} > {log} 2>&1"


rule subnet:
    input:
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        supernet=f"{RES}/rfquant/supernet.pt",
    output:
        model=update(f"{RES}/policies/{{policy}}/model.pt"),
        timing=update(timing_file("subnet")),
    wildcard_constraints:
        policy=policies_made_by("subnet"),
    params:
        **stage_params("subnet"),
        spec=finetune_spec,
    log:
        f"{RES}/logs/subnet/{{policy}}.log",
    threads: threads_of("subnet")
    resources:
        **resources_of("subnet"),
    shell:
        "$MPQ_RUN_subnet --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --policy {input.policy} --supernet {input.supernet} --out {output.model} > {log} 2>&1"
