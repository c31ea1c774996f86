package mmos;

import org.opensearch.Version;
import org.opensearch.analysis.common.CommonAnalysisModulePlugin;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasModulePlugin;
import org.opensearch.index.reindex.ReindexModulePlugin;
import org.opensearch.knn.plugin.KNNPlugin;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessModulePlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.plugins.PluginInfo;
import org.opensearch.transport.Netty4ModulePlugin;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;

/**
 * OpenSearch 3.x: modules are {@code *ModulePlugin} classes, and {@link Node} takes a {@link PluginInfo}
 * per classpath plugin instead of the class.
 */
final class MajorNode extends Node {
    static final List<Class<? extends Plugin>> PLUGINS = List.of(Netty4ModulePlugin.class,
        CommonAnalysisModulePlugin.class, MapperExtrasModulePlugin.class, ReindexModulePlugin.class,
        PainlessModulePlugin.class, KNNPlugin.class);

    private MajorNode(Environment env, Collection<PluginInfo> plugins) {
        super(env, plugins, true);
    }

    static Node create(Environment env, Collection<Class<? extends Plugin>> plugins) {
        List<PluginInfo> infos = new ArrayList<>();
        for (Class<? extends Plugin> plugin : plugins) {
            infos.add(new PluginInfo(plugin.getName(), "classpath plugin", "NA", Version.CURRENT, "21",
                plugin.getName(), Collections.emptyList(), false));
        }
        return new MajorNode(env, infos);
    }

    /** As in 2.x: classpath plugins never get loadExtensions, so Painless is fed its SPI extensions here. */
    static void loadPainlessExtensions() {
        new PainlessModulePlugin().loadExtensions(Launcher.SPI_EXTENSIONS);
    }
}
