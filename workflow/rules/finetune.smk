# Three rules make a policy's model.pt; each policy goes to exactly one of them (common.smk
# finetune_rule_of), so the DAG names what actually runs.


rule finetune:
    input:
        script=stage("finetune"),
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        fp32=f"{RES}/pretrain/model.pt",
    output:
        update(f"{RES}/policies/{{policy}}/model.pt"),
    wildcard_constraints:
        policy=policies_made_by("finetune"),
    params:
        spec=finetune_spec,
    benchmark:
        f"{RES}/benchmarks/finetune/{{policy}}.tsv"
    log:
        f"{RES}/logs/finetune/{{policy}}.log",
    threads: res("finetune", "threads")
    resources:
        gpu=res("finetune", "gpu"),
        mem_mb=res("finetune", "mem_mb"),
        runtime=res("finetune", "runtime"),
    shell:
        "{LAUNCH[finetune]} {input.script} --spec {params.spec:q} --threads {threads}"
        " --policy {input.policy} --fp32 {input.fp32} --out {output} > {log} 2>&1"


rule ptq:
    input:
        script=stage("ptq"),
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        fp32=f"{RES}/pretrain/model.pt",
    output:
        update(f"{RES}/policies/{{policy}}/model.pt"),
    wildcard_constraints:
        policy=policies_made_by("ptq"),
    params:
        spec=finetune_spec,
    benchmark:
        f"{RES}/benchmarks/finetune/{{policy}}.tsv"
    log:
        f"{RES}/logs/ptq/{{policy}}.log",
    threads: res("ptq", "threads")
    resources:
        gpu=res("ptq", "gpu"),
        mem_mb=res("ptq", "mem_mb"),
        runtime=res("ptq", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --policy {input.policy} --fp32 {input.fp32} --out {output} > {log} 2>&1"


rule subnet:
    input:
        script=stage("subnet"),
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        supernet=f"{RES}/rfquant/supernet.pt",
    output:
        update(f"{RES}/policies/{{policy}}/model.pt"),
    wildcard_constraints:
        policy=policies_made_by("subnet"),
    params:
        spec=finetune_spec,
    benchmark:
        f"{RES}/benchmarks/finetune/{{policy}}.tsv"
    log:
        f"{RES}/logs/subnet/{{policy}}.log",
    threads: res("subnet", "threads")
    resources:
        gpu=res("subnet", "gpu"),
        mem_mb=res("subnet", "mem_mb"),
        runtime=res("subnet", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --policy {input.policy} --supernet {input.supernet} --out {output} > {log} 2>&1"
