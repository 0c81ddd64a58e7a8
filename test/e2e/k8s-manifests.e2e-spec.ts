import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { parseAllDocuments } from 'yaml';
import { envSchema, validateEnv } from '../../src/config/env.schema';
import { startTestApp, TestApp } from '../support/app';

/**
 * deploy/k8s rendered by kustomize (kubectl must be on the machine: the test fails without it),
 * every object validated against the Kubernetes OpenAPI schema offline, and checked against the
 * app itself: probe paths it serves, the port it listens on, variables its config schema knows.
 */
const K8S_DIR = resolve(__dirname, '../../deploy/k8s');
const MIGRATION_COMPONENT = '../../components/migration-job';

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

/** The model class of every kind the manifests may hold; any other kind fails the test. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'batch/v1/Job': Job,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'v1/ConfigMap': ConfigMap,
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
};

function kustomize(dir: string): Manifest[] {
  let output: string;
  try {
    output = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(
        'kubectl is not on PATH: the Kubernetes manifest test needs `kubectl kustomize`',
      );
    }
    throw new Error(`kubectl kustomize ${dir} failed: ${String(error)}`);
  }
  return parseAllDocuments(output).map((document) => {
    if (document.errors.length) throw new Error(document.errors.map(String).join('; '));
    return document.toJSON() as Manifest;
  });
}

/** The production overlay with the migration-job component enabled, as its comment says. */
function renderProductionWithMigrationJob(): Manifest[] {
  const copy = mkdtempSync(join(tmpdir(), 'k8s-manifests-'));
  try {
    cpSync(K8S_DIR, copy, { recursive: true });
    const overlay = join(copy, 'overlays/production/kustomization.yaml');
    const text = readFileSync(overlay, 'utf8');
    writeFileSync(overlay, `${text}\ncomponents:\n  - ${MIGRATION_COMPONENT}\n`);
    return kustomize(join(copy, 'overlays/production'));
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
}

/** The one object of a kind, typed by its model's guard. */
function only<T>(manifests: unknown[], is: (value: unknown) => value is T): T {
  const found = manifests.filter(is);
  expect(found).toHaveLength(1);
  return found[0];
}

const deploymentOf = (manifests: unknown[]) => only(manifests, Deployment.is);
const podOf = (manifests: unknown[]) => deploymentOf(manifests).spec!.template.spec!;
const podLabelsOf = (manifests: unknown[]) =>
  deploymentOf(manifests).spec!.template.metadata!.labels!;

const jobsOf = (manifests: unknown[]) => manifests.filter(Job.is);

/** The container environment: the ConfigMap's data and the Secret's stringData. */
function settings(manifests: unknown[]): Record<string, string> {
  return {
    ...only(manifests, ConfigMap.is).data,
    ...only(manifests, Secret.is).stringData,
  };
}

const matches = (selector: Record<string, string> | undefined, labels: Record<string, string>) =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([key, value]) => labels[key] === value);

const renders: [string, () => Manifest[]][] = [
  ['base', () => kustomize(join(K8S_DIR, 'base'))],
  ['production', () => kustomize(join(K8S_DIR, 'overlays/production'))],
  ['production + migration-job', renderProductionWithMigrationJob],
];

describe.each(renders)('Kubernetes manifests: %s', (_name, render) => {
  let manifests: Manifest[];
  beforeAll(() => {
    manifests = render();
  });

  it('validates every object against the Kubernetes schema', () => {
    expect(manifests.length).toBeGreaterThanOrEqual(7);
    for (const manifest of manifests) {
      const Model = MODELS[`${manifest.apiVersion}/${manifest.kind}`];
      if (!Model) throw new Error(`no model for ${manifest.apiVersion} ${manifest.kind}`);
      expect(() => new Model(manifest as never).validate()).not.toThrow();
    }
  });

  it('sets only variables of the config schema, and a valid configuration', () => {
    const known = new Set(Object.keys(envSchema.shape));
    const env = settings(manifests);
    const containers = [
      ...podOf(manifests).containers,
      ...jobsOf(manifests).flatMap((job) => job.spec!.template.spec!.containers),
    ];
    const names = [
      ...Object.keys(env),
      ...containers.flatMap((container) => (container.env ?? []).map((variable) => variable.name)),
    ];
    expect(names.filter((name) => !known.has(name))).toEqual([]);
    // Every container reads its settings from the ConfigMap and the Secret, nothing else.
    for (const container of containers) {
      expect(container.envFrom).toEqual([
        { configMapRef: { name: only(manifests, ConfigMap.is).metadata!.name } },
        { secretRef: { name: only(manifests, Secret.is).metadata!.name } },
      ]);
    }
    expect(() => validateEnv(env)).not.toThrow();
  });

  it('runs at least two non-root, read-only replicas spread over nodes', () => {
    const pod = podOf(manifests);
    expect(deploymentOf(manifests).spec!.replicas).toBeGreaterThanOrEqual(2);
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 1000, // the Dockerfile's `USER node`
      seccompProfile: { type: 'RuntimeDefault' },
    });
    for (const container of pod.containers) {
      expect(container.securityContext).toMatchObject({
        runAsNonRoot: true,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ['ALL'] },
      });
      expect(container.resources?.requests).toEqual(
        expect.objectContaining({ cpu: expect.any(String), memory: expect.any(String) }),
      );
      expect(container.resources?.limits?.memory).toEqual(expect.any(String));
    }
    const spreadByNode = (pod.topologySpreadConstraints ?? []).some(
      (constraint) =>
        constraint.topologyKey === 'kubernetes.io/hostname' &&
        matches(constraint.labelSelector?.matchLabels, podLabelsOf(manifests)),
    );
    expect(spreadByNode).toBe(true);
  });

  it('gives the pod longer to stop than SHUTDOWN_DELAY_MS + SHUTDOWN_GRACE_MS', () => {
    const env = settings(manifests);
    const delayMs = Number(env.SHUTDOWN_DELAY_MS);
    const graceMs = Number(env.SHUTDOWN_GRACE_MS);
    // The app's grace timer covers the delay too; a delay at least as long would always exit 1.
    expect(delayMs).toBeGreaterThan(0);
    expect(delayMs).toBeLessThan(graceMs);
    const podGrace = podOf(manifests).terminationGracePeriodSeconds;
    expect(podGrace).toBeGreaterThan((delayMs + graceMs) / 1000);
  });

  it('listens on the port the ConfigMap sets, which the Service, probes and policy name', () => {
    const [container] = podOf(manifests).containers;
    const http = container.ports?.find((port) => port.name === 'http');
    expect(http?.containerPort).toBe(Number(settings(manifests).PORT));
    const service = only(manifests, Service.is);
    expect(service.spec!.ports!.map((port) => port.targetPort)).toEqual(['http']);
    for (const probe of [
      container.startupProbe,
      container.livenessProbe,
      container.readinessProbe,
    ]) {
      expect(probe?.httpGet?.port).toBe('http');
    }
    const policy = only(manifests, NetworkPolicy.is);
    expect(policy.spec!.ingress!.flatMap((rule) => rule.ports)).toEqual([
      { protocol: 'TCP', port: http?.containerPort },
    ]);
  });

  it('selects the Deployment’s pods from the Service, PDB, HPA and NetworkPolicy', () => {
    const deployment = deploymentOf(manifests);
    const podLabels = podLabelsOf(manifests);
    expect(matches(deployment.spec!.selector.matchLabels, podLabels)).toBe(true);
    expect(matches(only(manifests, Service.is).spec!.selector, podLabels)).toBe(true);
    const pdb = only(manifests, PodDisruptionBudget.is).spec!;
    expect(matches(pdb.selector?.matchLabels, podLabels)).toBe(true);
    expect(pdb.maxUnavailable ?? 0).toBeLessThan(deployment.spec!.replicas!);
    const policy = only(manifests, NetworkPolicy.is).spec!;
    expect(matches(policy.podSelector.matchLabels, podLabels)).toBe(true);
    const hpa = only(manifests, HorizontalPodAutoscaler.is).spec!;
    expect(hpa.scaleTargetRef).toEqual({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      name: deployment.metadata!.name,
    });
    expect(hpa.minReplicas).toBeGreaterThanOrEqual(2);
    expect(hpa.metrics?.map((metric) => metric.resource?.name)).toEqual(['cpu']);
  });

  it('migrates either at start-up or in a Job, never both nor neither', () => {
    const jobs = jobsOf(manifests);
    const migrateOnStart = validateEnv(settings(manifests)).MIGRATE_ON_START;
    expect(jobs).toHaveLength(migrateOnStart ? 0 : 1);
    for (const job of jobs) {
      const [container] = job.spec!.template.spec!.containers;
      expect(container.command).toEqual(['node', 'dist/database/migrate.cli.js']);
      expect(container.image).toBe(podOf(manifests).containers[0].image);
    }
  });
});

describe('Kubernetes manifests: production overlay', () => {
  it('puts everything in its namespace, with 3 replicas, more resources and a real image', () => {
    const production = kustomize(join(K8S_DIR, 'overlays/production'));
    const base = kustomize(join(K8S_DIR, 'base'));
    const namespace = only(production, Namespace.is).metadata!.name;
    for (const manifest of production.filter((item) => item.kind !== 'Namespace')) {
      expect(manifest.metadata.namespace).toBe(namespace);
    }
    expect(deploymentOf(production).spec!.replicas).toBe(3);
    expect(only(production, HorizontalPodAutoscaler.is).spec!.minReplicas).toBe(3);
    const [container] = podOf(production).containers;
    expect(container.image).not.toMatch(/:latest$|^vector-service/);
    const baseLimits = podOf(base).containers[0].resources?.limits;
    expect(container.resources?.limits).not.toEqual(baseLimits);
  });
});

describe('Kubernetes manifests: probes against the app', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(() => t?.close());

  it('serves every probe path with 200, liveness never the dependency check', async () => {
    const [container] = podOf(kustomize(join(K8S_DIR, 'overlays/production'))).containers;
    const paths = [container.startupProbe, container.livenessProbe, container.readinessProbe].map(
      (probe) => probe!.httpGet!.path!,
    );
    for (const path of paths) {
      const res = await t.http.get(path);
      expect({ path, status: res.status }).toEqual({ path, status: 200 });
    }
    expect(paths).toEqual([
      '/api/v1/vector/health/live',
      '/api/v1/vector/health/live',
      '/api/v1/vector/health/ready',
    ]);
  });
});
