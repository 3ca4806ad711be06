"""The pipeline's steps: their knobs, their logic, and the KFP components that wrap them.

    params.py          PipelineParams: every knob of the pipeline, and the library configs built from it
    steps/             what each step does, as plain functions over folders (testable and runnable without KFP)
    component.py       the decorator every component uses, and the image they run in
    start.py, data.py, training.py, evaluation.py
                       the KFP v2 components: thin typed shells that parse, call a step, and write artifact metadata

This file imports nothing: a component's body imports `components.params` and `components.steps` when it runs, and
there KFP sets `_KFP_RUNTIME`, under which `kfp.dsl` leaves out its authoring API (`dsl.component` among it).
"""
